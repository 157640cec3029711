"""Reading a model's capacity off the outside judge's curve: the log fit, the tolerance rule
on both sides of its threshold, the card it is written into, and bench/judge_capacity.py end
to end on faces this test makes."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_face_folder
from vigface.evaluation.capacity import (
    FIGURE,
    LogFit,
    fit_log_curve,
    read_capacity,
    record_judge_capacity,
)
from vigface.model_card import load_card

ROOT = Path(__file__).resolve().parents[2]


def test_log_fit_recovers_its_line_and_measures_its_residual():
    exact = {n: 0.43 - 0.016 * math.log(n) for n in (100, 200, 500, 1000)}
    fit = fit_log_curve(exact)
    assert fit.a == pytest.approx(0.43, abs=1e-9) and fit.b == pytest.approx(-0.016, abs=1e-9)
    assert fit.residual_rms == pytest.approx(0.0, abs=1e-9)
    noisy = {n: y + (0.002 if i % 2 else -0.002) for i, (n, y) in enumerate(exact.items())}
    assert fit_log_curve(noisy).residual_rms > 0.001
    with pytest.raises(ValueError, match="at least two"):
        fit_log_curve({100: 0.35})


def test_capacity_rule_on_both_sides_of_the_tolerance():
    fit = LogFit(a=0.43, b=-0.016, residual_rms=0.001)
    spread = {100: 0.0005, 1000: 0.0, 10000: 0.0}
    tol = {n: 2 * math.hypot(0.001, s) for n, s in spread.items()}
    # just inside the tolerance everywhere: as distinct, and nothing failed
    inside = {n: fit(n) - 0.99 * tol[n] for n in spread}
    reading = read_capacity(inside, spread, fit)
    assert reading.capacity == 10000 and not reading.bounded
    assert all(r["as_distinct"] for r in reading.rows)
    # just outside it at 10,000: capacity stops at the last population that passed
    outside = {**inside, 10000: fit(10000) - 1.01 * tol[10000]}
    reading = read_capacity(outside, spread, fit)
    assert reading.capacity == 1000 and reading.bounded and reading.measured_up_to == 10000
    assert [r["as_distinct"] for r in reading.rows] == [True, True, False]
    # a failure caps the capacity even when a larger population passes again
    dip = {**inside, 1000: fit(1000) - 0.05}
    assert read_capacity(dip, spread, fit).capacity == 100
    # the spread over random populations widens the tolerance
    wide = {100: 0.01, 1000: 0.0, 10000: 0.0}
    low = {**inside, 100: fit(100) - 0.015}
    assert read_capacity(low, spread, fit).capacity == 0
    assert read_capacity(low, wide, fit).capacity == 10000
    with pytest.raises(ValueError, match="no delivered"):
        read_capacity({}, {}, fit)


def _summary(**change) -> dict:
    base = {
        "judge": "dlib_resnet_v1",
        "identities": 5000,
        "measured_up_to": 20000,
        "bounded": True,
        "images_per_identity": 2,
        "real_resolution": 32,
        "tolerance_sigmas": 2.0,
        "measured_on": "runs/store/demo100k",
    }
    return base | change


def test_capacity_is_recorded_in_the_card_and_a_bad_one_changes_nothing(tiny_generator, tmp_path):
    entry = tmp_path / "gen"
    shutil.copytree(tiny_generator, entry)
    png = tmp_path / "curve.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = (entry / "model_card.json").read_bytes()
    with pytest.raises(ValueError, match="identities"):
        record_judge_capacity(entry, _summary(identities=-1), {"rows": []}, png)
    assert (entry / "model_card.json").read_bytes() == before
    assert not (entry / FIGURE).exists()

    card = record_judge_capacity(entry, _summary(), {"rows": [1]}, png)
    assert card["capacity"]["judge"]["identities"] == 5000
    loaded = load_card(entry)
    assert loaded["capacity"]["judge"]["figure"] == FIGURE
    assert loaded["capacity"]["virtual_identities"] == loaded["num_virtual"]
    assert (entry / FIGURE).read_bytes() == png.read_bytes()
    assert json.loads((entry / "measurements" / "judge_capacity.json").read_text()) == {"rows": [1]}
    with pytest.raises(ValueError, match="no model card"):
        record_judge_capacity(tmp_path / "empty", _summary(), {}, None)


def test_judge_capacity_script_end_to_end(tiny_generator, tmp_path):
    pytest.importorskip("dlib")
    real = make_face_folder(tmp_path / "real", identities=6, per_identity=3, seed=1)
    draw_a = make_face_folder(tmp_path / "draw_a" / "imagefolder", identities=4, seed=2)
    draw_b = make_face_folder(tmp_path / "draw_b", identities=4, seed=3)
    entry = tmp_path / "gen"
    shutil.copytree(tiny_generator, entry)
    out = tmp_path / "capacity.png"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "judge_capacity.py"),
        "--drawn", f"{draw_a.parent},{draw_b}",
        "--real", str(real),
        "--populations", "2,3,4",
        "--repeats", "2",
        "--cache", str(tmp_path / "cache"),
        "--out", str(out),
        "--card", str(entry),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # same class names in both folders: kept apart, 8 identities
    assert result["measured_up_to"] == 8 and set(result["delivered"]) == {"2", "3", "4", "8"}
    assert result["capacity"] in {0, 2, 3, 4, 8}
    assert out.read_bytes()[:4] == b"\x89PNG"
    judge = load_card(entry)["capacity"]["judge"]
    assert judge["identities"] == result["capacity"] and judge["measured_up_to"] == 8

    bad = subprocess.run([*cmd[:-2], "--card", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "no model_card.json" in bad.stderr
