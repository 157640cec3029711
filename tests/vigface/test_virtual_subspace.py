"""The face-subspace constraint on W_V: its linear algebra, stage 1 with it, and the refit."""

import json

import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from conftest import make_face_folder
from vigface.config import load_config
from vigface.fr_model import FRModel
from vigface.losses.subspace import energy_in_span, face_subspace, project_rows
from vigface.training.fr import train_fr
from vigface.training.virtual_refit import real_embeddings, refit_virtual

runner = CliRunner()


def test_subspace_finds_the_span_of_the_real_prototypes_and_projection_keeps_norms():
    g = torch.Generator().manual_seed(0)
    span = torch.linalg.qr(torch.randn(16, 3, generator=g)).Q.T  # 3 orthonormal rows in 16-D
    real = torch.randn(200, 3, generator=g) @ span + 1e-4 * torch.randn(200, 16, generator=g)
    basis = face_subspace(real, energy=0.999)
    assert basis.shape == (3, 16)
    torch.testing.assert_close(basis.T @ basis, span.T @ span, atol=1e-3, rtol=0)
    assert face_subspace(real, energy=0.3).shape[0] == 1
    w = torch.randn(10, 16, generator=g)
    assert energy_in_span(w, basis) < 0.6
    p = project_rows(w, basis)
    assert energy_in_span(p, basis) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(p.norm(dim=1), w.norm(dim=1))
    with pytest.raises(ValueError, match="energy"):
        face_subspace(real, energy=0.0)


@pytest.fixture
def plain_fr(face_folder, tiny_config, tmp_path):
    """A tiny stage-1 model trained without the constraint, in ``tmp_path / "fr"``."""
    cfg = load_config(tiny_config, overrides={"epochs": 1})
    return train_fr(cfg, face_folder, tmp_path / "fr", progress=False)


@pytest.fixture
def constrained_fr(face_folder, tiny_config, tmp_path):
    cfg = load_config(tiny_config, overrides={"epochs": 1, "head.virtual_subspace_energy": 0.9})
    return train_fr(cfg, face_folder, tmp_path / "fr_c", progress=False)


def test_stage1_with_the_constraint_keeps_w_v_in_the_face_subspace(
    constrained_fr, plain_fr, tmp_path
):
    basis = face_subspace(constrained_fr.real_prototypes, 0.9)
    assert basis.shape[0] <= 6  # six real identities span at most six directions of 32
    assert energy_in_span(constrained_fr.virtual_prototypes, basis) > 0.999
    free = plain_fr
    assert energy_in_span(free.virtual_prototypes, face_subspace(free.real_prototypes, 0.9)) < 0.9
    loaded = FRModel.load(tmp_path / "fr_c")
    assert loaded.config.head.virtual_subspace_energy == 0.9


def test_refit_moves_only_w_v_into_the_subspace(plain_fr, face_folder):
    fr = plain_fr
    emb, labels = real_embeddings(fr, face_folder, progress=False)
    assert emb.shape == (2 * 6 * 8, 32) and labels.bincount().tolist() == [16] * 6
    out = refit_virtual(fr, emb, labels, energy=0.9, steps=40, batch_size=16, progress=False)
    basis = face_subspace(fr.real_prototypes, 0.9)
    assert energy_in_span(fr.virtual_prototypes, basis) < 0.9
    assert energy_in_span(out.virtual_prototypes, basis) > 0.999
    assert torch.equal(out.real_prototypes, fr.real_prototypes)
    assert out.backbone is fr.backbone and out.classes == fr.classes
    r = out.card["virtual_refit"]
    assert r["subspace_dims"] == basis.shape[0] and r["steps"] == 40
    assert r["virtual_energy_in_span_after"] > 0.999
    assert set(out.card["orthogonality"]) == {"v_to_r", "r_to_r", "v_to_v"}
    assert fr.config.head.virtual_subspace_energy is None  # the source model is untouched
    assert out.config.head.virtual_subspace_energy == 0.9


def test_cli_refit_writes_a_new_model_and_refuses_to_overwrite(plain_fr, face_folder, tmp_path):
    before = (tmp_path / "fr" / "prototypes.safetensors").read_bytes()
    out = tmp_path / "fr_refit"
    args = ["refit-virtual", "--model", str(tmp_path / "fr"), "--data", str(face_folder)]
    res = runner.invoke(app, [*args, "--out", str(out), "--steps", "20", "--batch-size", "16"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["virtual_energy_in_span"][1] > 0.999
    refit = FRModel.load(out)
    assert refit.card["virtual_refit"]["source"] == str(tmp_path / "fr")
    assert (out / "train_log.jsonl").is_file()

    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "--out" in again.output
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--energy", "1.5"])
    assert bad.exit_code == 2 and "--energy" in bad.output
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--max-real-cos", "2"])
    assert bad.exit_code == 2 and "--max-real-cos" in bad.output
    other = make_face_folder(tmp_path / "other", identities=4)  # not the model's identities
    wrong_args = ["refit-virtual", "--model", str(tmp_path / "fr"), "--data", str(other)]
    wrong = runner.invoke(app, [*wrong_args, "--out", str(tmp_path / "y")])
    assert wrong.exit_code == 2 and "identities" in wrong.output
    assert (tmp_path / "fr" / "prototypes.safetensors").read_bytes() == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_refit_hinge_lowers_the_closest_virtual_to_real_cosines(plain_fr, face_folder):
    fr = plain_fr
    emb, labels = real_embeddings(fr, face_folder, progress=False)
    kw = dict(energy=0.9, steps=60, batch_size=16, progress=False)
    plain = refit_virtual(fr, emb, labels, **kw)
    near = plain.card["orthogonality"]["v_to_r"]["max"]
    hinged = refit_virtual(fr, emb, labels, max_real_cos=near - 0.2, **kw)
    assert hinged.card["orthogonality"]["v_to_r"]["max"] < near - 0.1
    assert hinged.card["virtual_refit"]["max_real_cos"] == pytest.approx(near - 0.2)
    again = refit_virtual(hinged, emb, labels, **kw)  # a refit of a refit keeps the first record
    assert again.card["virtual_refit_history"] == [hinged.card["virtual_refit"]]
    assert plain.card["virtual_refit_history"] == []
