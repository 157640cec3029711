"""A generator trained in legs: ``vigface models add RUN --continues ENTRY`` folds a run that
warm-started from ENTRY back into it (``model_store/legs.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from app.cli import app
from conftest import TERMS_FILE, TINY_DIT
from vigface.config import TrainDiTConfig
from vigface.model_card import load_card
from vigface.training.dit import train_dit

runner = CliRunner()


def _leg(data: Path, fr: Path, init_from: Path, out: Path, **overrides) -> Path:
    cfg = yaml.safe_load(TINY_DIT) | {"epochs": 1, "init_from": str(init_from), **overrides}
    train_dit(TrainDiTConfig.model_validate(cfg), data, fr, out, progress=False)
    return out


@pytest.fixture
def store(tmp_path: Path, tiny_generator: Path) -> Path:
    """A store holding the tiny generator as ``tiny``, with a calibration, a judge reference,
    a measurement of its weights and a training curve."""
    st = tmp_path / "st"
    r = runner.invoke(
        app,
        ["models", "add", str(tiny_generator), "--name", "tiny", "--store", str(st), "--terms",
         TERMS_FILE],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    entry = st / "tiny"
    card = json.loads((entry / "model_card.json").read_text())
    card |= {
        "filters": {"tau_leak": 1.0, "tau_consistency": -1.0},
        "judge": {"name": "dlib", "resolution": 16, "real": {"between": 0.35}},
        "reproduce": ["vigface train-dit (leg 1)"],
        "train_minutes": 2.0,
        "precision": "float32",
    }
    (entry / "model_card.json").write_text(json.dumps(card))
    (entry / "measurements").mkdir()
    (entry / "measurements" / "training_curve.json").write_text('{"points": [1]}')
    (entry / "measurements" / "identity_fidelity.json").write_text('{"cos": 0.5}')
    return st


def test_a_leg_folds_into_its_entry(tmp_path: Path, store: Path, tiny_generator: Path):
    entry = store / "tiny"
    before = json.loads((entry / "model_card.json").read_text())
    old_weights = load_file(entry / "dit" / "diffusion_pytorch_model.safetensors")
    data = tiny_generator.parent / "train"
    leg = _leg(
        data, tiny_generator.parent / "fr", entry, tmp_path / "leg", identity_loss_weight=0.3
    )
    leg_card = json.loads((leg / "model_card.json").read_text())

    r = runner.invoke(
        app,
        ["models", "add", str(leg), "--name", "tiny", "--store", str(store), "--continues",
         str(entry), "--replace", "--leg-command", "train-dit --set identity_loss_weight=0.3"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "measurements/identity_fidelity.json" in r.output and "card: filters" in r.output
    assert "vigface calibrate --model" in r.output

    card = load_card(entry)
    assert card["steps"] == before["steps"] + leg_card["steps"]
    assert card["train_minutes"] == pytest.approx(2.0 + leg_card["train_minutes"], abs=0.05)
    assert "filters" not in card  # the old thresholds described the old weights
    assert card["judge"]["real"] == {"between": 0.35}  # real people's figures carry over
    assert card["reproduce"][0] == "vigface train-dit (leg 1)"
    assert "identity_loss_weight=0.3" in card["reproduce"][1]
    assert card["precision"].startswith("float32")

    legs = json.loads((entry / "measurements" / "training_legs.json").read_text())
    assert [x["steps"] for x in legs] == [before["steps"], leg_card["steps"]]
    assert legs[1]["config"]["identity_loss_weight"] == 0.3
    assert legs[1]["init_from"] == f"{entry} at {before['steps']} steps"
    assert (entry / "measurements" / "training_curve.json").is_file()
    assert not (entry / "measurements" / "identity_fidelity.json").exists()

    steps = [json.loads(x)["step"] for x in (entry / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and before["steps"] < steps[-1] <= card["steps"]
    new_weights = load_file(entry / "dit" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(new_weights[k], old_weights[k]) for k in old_weights)
    assert not list(store.glob(".tiny*"))  # no temporary or old folder left

    # the orders refuse the uncalibrated entry until it is calibrated (or give thresholds)
    from vigface.dataset.spec import DatasetSpec, FiltersNotCalibrated, resolve_spec

    with pytest.raises(FiltersNotCalibrated, match="vigface calibrate"):
        resolve_spec(DatasetSpec(identities=2, images_per_identity=2), card)

    # a second leg appends to the list of legs
    leg2 = _leg(data, tiny_generator.parent / "fr", entry, tmp_path / "leg2")
    r = runner.invoke(
        app, ["models", "add", str(leg2), "--name", "tiny2", "--store", str(store),
              "--continues", str(entry)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    legs2 = json.loads((store / "tiny2" / "measurements" / "training_legs.json").read_text())
    assert len(legs2) == 3 and load_card(store / "tiny2")["steps"] == sum(x["steps"] for x in legs2)
    assert load_card(entry)["steps"] == card["steps"]  # a new name leaves the entry alone


def test_what_is_not_a_continuation_is_refused_and_nothing_changes(
    tmp_path: Path, store: Path, tiny_generator: Path
):
    entry = store / "tiny"
    snapshot = {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()}
    data, fr = tiny_generator.parent / "train", tiny_generator.parent / "fr"

    def add(run: Path, *extra: str):
        return runner.invoke(
            app, ["models", "add", str(run), "--name", "tiny", "--store", str(store), *extra]
        )

    # warm-started from another entry
    other = store.parent / "other"
    shutil.copytree(entry, other)
    leg = _leg(data, fr, other, tmp_path / "leg_other")
    r = add(leg, "--continues", str(entry), "--replace")
    assert r.exit_code == 2 and "warm-started from" in r.output and "not from" in r.output

    # no warm start at all
    fresh = _leg(data, fr, entry, tmp_path / "fresh")
    card = json.loads((fresh / "model_card.json").read_text())
    card["init_from"] = None
    (fresh / "model_card.json").write_text(json.dumps(card))
    r = add(fresh, "--continues", str(entry), "--replace")
    assert r.exit_code == 2 and "did not warm-start" in r.output

    # another stage-1 model
    leg = _leg(data, fr, entry, tmp_path / "leg_fr")
    protos = leg / "fr" / "prototypes.safetensors"
    tensors = load_file(protos)
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in tensors.items()}, protos)
    r = add(leg, "--continues", str(entry), "--replace")
    assert r.exit_code == 2 and "stage-1 model (fr/) differs" in r.output

    # --replace only replaces the continued entry; without it an existing name is kept
    good = _leg(data, fr, entry, tmp_path / "good")
    r = add(good, "--replace")
    assert r.exit_code == 2 and "--replace replaces only" in r.output
    r = add(good, "--continues", str(entry))
    assert r.exit_code == 2 and "exists" in r.output
    r = add(good, "--continues", "no_such_entry")
    assert r.exit_code == 2 and "--continues" in r.output

    after = {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()}
    assert after == snapshot
    assert not list(store.glob(".tiny*"))


def test_a_leg_must_keep_the_entrys_latent_space(tmp_path: Path, store: Path):
    """A latent DiT learnt its autoencoder's latents: the same encoder (written again, as a leg
    writes its frozen autoencoder, or with a decoder trained on) continues the entry, another
    encoder or none does not."""
    from model_store.legs import NotAContinuation, check_continuation
    from vigface.generator.autoencoder import build_autoencoder, save_autoencoder

    torch.manual_seed(0)
    vae = build_autoencoder(block_out_channels=(8, 16), norm_num_groups=4, sample_size=32)
    prev, leg = store / "tiny", tmp_path / "leg"
    shutil.copytree(prev, leg)
    save_autoencoder(vae, prev / "autoencoder", {"kind": "autoencoder", "steps": 5})
    save_autoencoder(vae, leg / "autoencoder")
    card = {"init_from": str(prev)}
    check_continuation(prev, leg, card)  # the same tensors, files written again

    with torch.no_grad():
        next(vae.decoder.parameters()).add_(0.01)  # a decoder trained on
    save_autoencoder(vae, leg / "autoencoder")
    check_continuation(prev, leg, card)
    with torch.no_grad():
        next(vae.encoder.parameters()).add_(0.01)  # an encoder trained on: other latents
    save_autoencoder(vae, leg / "autoencoder")
    with pytest.raises(NotAContinuation, match="encodes other latents"):
        check_continuation(prev, leg, card)
    shutil.rmtree(leg / "autoencoder")  # a pixel-space leg of a latent entry
    with pytest.raises(NotAContinuation, match="encodes other latents"):
        check_continuation(prev, leg, card)
