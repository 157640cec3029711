"""End to end on generated images: train, resume, artifact, evaluation, CLI and ONNX."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from conftest import jpeg_bytes, synthetic_identity_images
from vigface.config import load_config
from vigface.data import write_bin
from vigface.fr_model import FRModel
from vigface.training.fr import train_fr

runner = CliRunner()


def _pairs_file(path, identities=6):
    rng = np.random.default_rng(7)
    imgs, same = [], []
    for i in range(60):
        a = i % identities
        b = a if i % 2 == 0 else (a + 1) % identities
        imgs += [synthetic_identity_images(rng, a, 1)[0], synthetic_identity_images(rng, b, 1)[0]]
        same.append(a == b)
    write_bin(path, [jpeg_bytes(x) for x in imgs], same)
    return path


def test_train_writes_a_loadable_artifact_and_resumes(face_folder, tiny_config, tmp_path):
    cfg = load_config(tiny_config, overrides={"epochs": 1})
    out = tmp_path / "fr"
    first = train_fr(cfg, face_folder, out, progress=False)
    assert (out / "checkpoints" / "last.pt").is_file()
    cfg2 = load_config(tiny_config, overrides={"epochs": 2})
    second = train_fr(cfg2, face_folder, out, progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "orthogonality" in r] == [1, 2]  # epoch 1 not redone
    assert any("sigma_mean" in r for r in log)
    loaded = FRModel.load(out)
    assert loaded.classes == [f"person_{i:03d}" for i in range(6)]
    assert loaded.real_prototypes.shape == (6, 32) and loaded.virtual_prototypes.shape == (4, 32)
    assert loaded.sigma.shape == (32,) and float(loaded.sigma.min()) > 0
    torch.testing.assert_close(loaded.virtual_prototypes, second.virtual_prototypes)
    assert not torch.equal(first.virtual_prototypes, second.virtual_prototypes)
    for k, v in second.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[k], v)
    card = json.loads((out / "model_card.json").read_text())
    assert set(card["orthogonality"]) == {"v_to_r", "r_to_r", "v_to_v"}
    assert card["num_real"] == 6 and card["num_virtual"] == 4


def test_cli_train_eval_models_and_onnx(face_folder, tiny_config, tmp_path, monkeypatch):
    pairs = _pairs_file(tmp_path / "pairs.bin")
    store = tmp_path / "store"
    out = store / "tiny-fr"
    r = runner.invoke(
        app,
        [
            "train-fr",
            "--config",
            str(tiny_config),
            "--data",
            str(face_folder),
            "--out",
            str(out),
            "--eval-pairs",
            str(pairs),
        ],
    )
    assert r.exit_code == 0, r.output
    card = json.loads((out / "model_card.json").read_text())
    # the six synthetic people it trained on, in held-out pairs: far above chance (0.98 seen)
    assert card["dev_accuracy"] >= 0.8

    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    r = runner.invoke(app, ["eval-fr", "--model", "tiny-fr", "--pairs", str(pairs)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.output.strip().splitlines()[-1])
    assert set(metrics) >= {"accuracy", "accuracy_std", "tar_at_far_1e-3"}
    assert metrics["accuracy"] == card["dev_accuracy"]

    r = runner.invoke(app, ["models"])
    assert "tiny-fr\tfr" in r.output
    r = runner.invoke(app, ["models", "show", "tiny-fr"])
    assert json.loads(r.output)["num_real"] == 6

    onnx_path = tmp_path / "fr.onnx"
    r = runner.invoke(app, ["export-onnx", "--model", "tiny-fr", "--out", str(onnx_path)])
    assert r.exit_code == 0, r.output
    import insightface

    rec = insightface.model_zoo.get_model(str(onnx_path), providers=["CPUExecutionProvider"])
    assert type(rec).__name__ == "ArcFaceONNX" and rec.input_size == (112, 112)
    imgs = synthetic_identity_images(np.random.default_rng(3), 2, 3)
    bgr = [im[:, :, ::-1].copy() for im in imgs]  # insightface takes OpenCV BGR images
    feats = rec.get_feat(bgr)  # dynamic batch of 3
    fr = FRModel.load(out)
    with torch.inference_mode():
        from vigface.data.augment import to_model_input

        ref = fr.embedder(to_model_input(torch.from_numpy(np.stack(imgs)))).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-3, atol=1e-3)


def test_cli_bad_inputs_fail_clearly(face_folder, tiny_config, tmp_path):
    r = runner.invoke(
        app,
        [
            "train-fr",
            "--config",
            str(tiny_config),
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "data folder not found" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nbatchsize: 4\n")
    r = runner.invoke(
        app,
        [
            "train-fr",
            "--config",
            str(bad),
            "--data",
            str(face_folder),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "batchsize" in r.output
    r = runner.invoke(app, ["eval-fr", "--model", "no-such-model", "--pairs", "x.bin"])
    assert r.exit_code == 2 and "no-such-model" in r.output
    r = runner.invoke(app, ["models", "show", "no-such-model"])
    assert r.exit_code == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_torchrun_two_processes_gloo(face_folder, tiny_config, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "app.cli",
        "train-fr",
        "--config",
        str(tiny_config),
        "--data",
        str(face_folder),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["world_size"] == 2
    # 48 images, 2 ranks x batch 8 -> 3 steps per epoch, 2 epochs
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 6
    FRModel.load(out)
