"""Matching W_V's spread to W_R's: the linear algebra, the real-prototype hinge on both sides
of its threshold, and the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from app.cli import app
from vigface.fr_model import FRModel
from vigface.losses.subspace import energy_in_span, face_subspace
from vigface.training.virtual_spectrum import (
    match_real_covariance,
    principal_variance_ratio,
    push_from_real,
)

runner = CliRunner()


def _prototypes(seed: int = 0):
    """Real rows spread unevenly over a 6-D span of 32-D (as faces are), virtual rows
    isotropic in that span (as ArcFace leaves them)."""
    g = torch.Generator().manual_seed(seed)
    span = torch.linalg.qr(torch.randn(32, 6, generator=g)).Q.T
    centre = 0.3 * torch.randn(6, generator=g)
    stds = torch.tensor([1.0, 0.8, 0.5, 0.3, 0.2, 0.1])
    real = (centre + torch.randn(60, 6, generator=g) * stds) @ span
    virtual = (centre + 0.35 * torch.randn(300, 6, generator=g)) @ span
    return real, virtual


def test_matched_rows_spread_like_the_real_ones_and_stay_in_the_subspace():
    real, virtual = _prototypes()
    before = principal_variance_ratio(real, virtual, energy=0.999, top=3)
    assert before[0] < 0.6  # the leading real direction is under-used by W_V
    unit = match_real_covariance(real, virtual, energy=0.999, max_real_cos=0.999)
    after = principal_variance_ratio(real, unit, energy=0.999, top=3)
    assert all(0.75 < r < 1.3 for r in after), after
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(len(unit)))
    assert energy_in_span(unit, face_subspace(real, 0.999)) > 0.999
    # a linear map of each row: identical rows stay identical, the order of rows is kept
    twice = torch.cat([virtual, virtual[:5]])
    again = match_real_covariance(real, twice, energy=0.999, max_real_cos=0.999)
    torch.testing.assert_close(again[-5:], again[:5])


def test_hinge_acts_only_above_its_threshold():
    real, virtual = _prototypes(1)
    unit = match_real_covariance(real, virtual, energy=0.999, max_real_cos=0.999)
    nearest = (unit @ F.normalize(real, dim=1).T).max(1).values
    cap = float(nearest.quantile(0.5))  # half the rows are nearer than this to a real row
    pushed = match_real_covariance(real, virtual, energy=0.999, max_real_cos=cap)
    assert float((pushed @ F.normalize(real, dim=1).T).max()) <= cap + 1e-3
    moved = (pushed - unit).norm(dim=1) > 1e-6
    assert moved[nearest > cap + 1e-3].all()
    # above every cosine the hinge leaves the rows as they are
    untouched = push_from_real(unit, real, float(nearest.max()) + 0.01)
    torch.testing.assert_close(untouched.float(), unit)


def test_bad_inputs_are_refused():
    real, virtual = _prototypes()
    with pytest.raises(ValueError, match="max_real_cos"):
        match_real_covariance(real, virtual, max_real_cos=1.5)
    with pytest.raises(ValueError, match="cannot fill"):
        match_real_covariance(real, virtual[:4], energy=0.999)
    flat = virtual.clone()
    flat[:, :] = virtual[0]  # no spread at all: nothing to whiten
    with pytest.raises(ValueError, match="singular"):
        match_real_covariance(real, flat, energy=0.999)


def test_cli_writes_a_new_fr_model_and_leaves_the_source_alone(tiny_generator, tmp_path):
    source = tiny_generator / "fr" / "prototypes.safetensors"
    before = source.read_bytes()
    out = tmp_path / "fr_matched"
    args = ["match-virtual-spectrum", "--model", str(tiny_generator)]
    res = runner.invoke(app, [*args, "--out", str(out), "--max-real-cos", "0.5"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["orthogonality"]["v_to_r"]["max"] <= 0.5 + 1e-3
    matched, original = FRModel.load(out), FRModel.load(tiny_generator / "fr")
    assert torch.equal(matched.real_prototypes, original.real_prototypes)
    assert not torch.equal(matched.virtual_prototypes, original.virtual_prototypes)
    card = matched.card["virtual_spectrum"]
    assert card["source"] == str(tiny_generator) and card["max_real_cos"] == 0.5
    assert source.read_bytes() == before

    refused = {
        "--out": [],
        "--max-real-cos": ["--max-real-cos", "1"],
        "--energy": ["--energy", "0"],
    }
    for flag, extra in refused.items():
        target = out if flag == "--out" else tmp_path / "x"
        res = runner.invoke(app, [*args, "--out", str(target), *extra])
        assert res.exit_code == 2 and flag in res.output, (flag, res.output)
    assert not (tmp_path / "x").exists() and source.read_bytes() == before
