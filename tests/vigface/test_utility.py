"""What a dataset is worth (the utility probe), the independent judge in every report, and the
stage-2 margin term."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from conftest import make_face_folder, toy_bin
from vigface.training.probe import dataset_utility, merge_sources, probe_config


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
    )


def test_sources_merge_by_identity_name(tmp_path):
    a = make_face_folder(tmp_path / "a", identities=3, per_identity=2)
    b = make_face_folder(tmp_path / "b", identities=2, per_identity=3, seed=1)
    (b / "person_001").rename(b / "v000007")  # a virtual identity of its own
    root = merge_sources([a, b], tmp_path / "merged")
    counts = {p.name: len(list(p.iterdir())) for p in root.iterdir()}
    assert counts == {"person_000": 2 + 3, "person_001": 2, "person_002": 2, "v000007": 3}


def test_probe_trains_a_fixed_budget_and_verifies(tmp_path):
    data = make_face_folder(tmp_path / "train", identities=8, per_identity=6)
    cfg = probe_config(steps=7, resolution=28, batch_size=16)
    cfg = cfg.model_copy(
        update={"backbone": cfg.backbone.model_copy(update={"layers": [1, 1, 1, 1]})}
    )
    result = dataset_utility([data], {"toy": toy_bin(tmp_path / "toy.bin")}, tmp_path / "w", cfg)
    assert result["recipe"]["steps"] == 7 and result["train"]["images"] == 48
    card = json.loads((tmp_path / "w" / "probe" / "model_card.json").read_text())
    assert card["steps"] == 7  # the budget, not whole epochs (48 images / 16 = 3 per epoch)
    toy = result["benchmarks"]["toy"]
    assert 0.0 <= toy["accuracy"] <= 1.0 and toy["pairs"] == 20


def test_evaluate_dataset_and_add_benchmark_commands(tmp_path):
    data = make_face_folder(tmp_path / "train", identities=6, per_identity=4)
    toy = toy_bin(tmp_path / "toy.bin")
    r = _cli("evaluate-dataset", "--data", str(data), "--pairs", str(tmp_path / "nope.bin"))
    assert r.returncode != 0 and "--pairs: not found" in r.stderr
    r = _cli(
        "evaluate-dataset", "--data", str(data), "--pairs", str(toy),
        "--steps", "2", "--resolution", "28", "--batch-size", "8",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["benchmarks"]["toy"]["pairs"] == 20
    env = {"VIGFACE_HOME": str(tmp_path / "home")}
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a pickle")
    r = _cli("admin", "add-benchmark", "lfw", str(bad), env=env)
    assert r.returncode == 2 and "FILE" in r.stderr
    r = _cli("admin", "add-benchmark", "../x", str(toy), env=env)
    assert r.returncode == 2 and "NAME" in r.stderr
    r = _cli("admin", "add-benchmark", "toy", str(toy), env=env)
    assert r.returncode == 0 and "20 pairs" in r.stdout
    assert (tmp_path / "home" / "storage" / "benchmarks" / "toy.bin").is_file()


def test_margin_term_is_zero_only_past_the_margin():
    from vigface.training.dit_loss import augment_for_fr, margin_violation

    bank = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    own = bank[:2]
    f = own.clone()  # exactly on the own prototype: cos 1, others < 1 - margin usually
    clear = margin_violation(f, own, bank, margin=0.0)
    assert torch.all(clear == 0)
    between = torch.nn.functional.normalize(bank[0] + bank[1], dim=0)[None]
    v = margin_violation(between, bank[:1], bank, margin=0.2)
    assert v.item() > 0.19  # as close to another prototype as to its own: the full margin
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    y = augment_for_fr(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0 + 1e-5


def test_every_report_gets_the_independent_judge_when_the_card_is_calibrated():
    from PIL import Image

    from vigface.dataset.assembly import judge_report

    rng = np.random.default_rng(0)
    items, labels = [], []
    for k in range(3):
        base = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
        for _ in range(2):
            import io

            buf = io.BytesIO()
            Image.fromarray(base).save(buf, format="JPEG")
            items.append((None, buf.getvalue()))
            labels.append(k)
    labels = np.array(labels)
    items = np.stack([np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")) for _, jpg in items])
    assert judge_report(items, labels, {}, None) is None  # no calibration, no section
    real = {"within": 0.33, "between": 0.32, "centre_to_real": 0.31, "resolution": 32}
    out = judge_report(items, labels, {"judge": {"real": real}}, None)
    assert "error" not in out, out
    assert out["synthetic"]["identities"] == 3 and out["synthetic"]["images"] == 6
    assert "not measured" in out["text"] and out["as_far_as_real"] is None
    # more identities than the calibration: judged on as many as it has (a seeded subset)
    out = judge_report(items, labels, {"judge": {"real": real | {"identities": 2}}}, None)
    assert out["synthetic"]["identities"] == 2 and out["synthetic"]["images"] == 4
    assert out["synthetic"]["sampled_from_identities"] == 3
