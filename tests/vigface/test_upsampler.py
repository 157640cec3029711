"""The cascade's upsampler: model, training, attaching it to an entry, sampling through it, and
orders that ask for it (CLI and API)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from app.cli import app as cli
from vigface.config import ConfigError, TrainUpsamplerConfig, load_config
from vigface.generator.artifact import Generator
from vigface.generator.upsampler import FaceUpsampler, UpsamplerStage, upsample_input
from vigface.sampling import ImageRequest, Sampler

TINY_UPSAMPLER = """
model: {low_size: 16, sample_size: 32, block_out_channels: [8, 16], norm_num_groups: 4}
diffusion: {num_train_timesteps: 100}
crop_size: 16
warmup_steps: 2
max_steps: 6
batch_size: 4
log_every: 2
checkpoint_every_steps: 3
threads: 1
"""

runner = CliRunner()


def tiny_model(**kw) -> FaceUpsampler:
    cfg = {"low_size": 16, "sample_size": 32, "block_out_channels": (8, 16), "norm_num_groups": 4}
    return FaceUpsampler(identity_dim=32, **(cfg | kw))


@pytest.fixture(scope="session")
def tiny_upsampler(tiny_generator, tmp_path_factory):
    """An upsampler trained for a few steps on the tiny generator's own training folder."""
    from vigface.training.upsampler import train_upsampler

    out = tmp_path_factory.mktemp("up") / "upsampler"
    cfg = TrainUpsamplerConfig.model_validate(yaml.safe_load(TINY_UPSAMPLER))
    train_upsampler(cfg, tiny_generator.parent / "train", tiny_generator.parent / "fr", out,
                    progress=False)  # fmt: skip
    return out


@pytest.fixture
def store(tiny_generator, tiny_upsampler, tmp_path):
    """A model store with the tiny generator twice: without (gen) and with (gen_up) upsampler."""
    root = tmp_path / "store"
    shutil.copytree(tiny_generator, root / "gen", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(root / "gen", root / "gen_up")
    r = runner.invoke(cli, ["models", "attach-upsampler", str(root / "gen_up"),
                            str(tiny_upsampler), "--steps", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return root


def test_identity_input_starts_as_a_no_op_and_learns_to_matter():
    m = tiny_model().eval()
    x, base = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    t, w = torch.tensor([10, 50]), torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(m(x, t, w, base), m(x, t, torch.zeros_like(w), base))
        torch.nn.init.normal_(m.identity_embed[2].weight)
        assert not torch.allclose(m(x, t, w, base), m(x, t, torch.zeros_like(w), base))


def test_fully_convolutional_any_side_and_the_base_is_bicubic():
    m = tiny_model().eval()
    with torch.no_grad():  # trained on crops, run on the whole face
        assert m(torch.randn(1, 3, 16, 16), torch.tensor([5]), torch.zeros(1, 32),
                 torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)  # fmt: skip
    flat = torch.full((1, 3, 16, 16), 0.25)
    assert torch.allclose(upsample_input(flat, 32), torch.full((1, 3, 32, 32), 0.25), atol=1e-6)


def test_half_precision_save_loads_as_float32(tmp_path):
    from vigface.generator.diffusion import training_scheduler

    stage = UpsamplerStage(tiny_model().eval(), training_scheduler(100), {"kind": "upsampler"})
    stage.save(tmp_path / "up", dtype=torch.float16)
    back = UpsamplerStage.load(tmp_path / "up")
    assert back.card == {"kind": "upsampler"} and back.size == 32 and back.low_size == 16
    p = next(back.model.parameters())
    assert p.dtype == torch.float32
    a = dict(stage.model.named_parameters())["unet.conv_in.weight"]
    b = dict(back.model.named_parameters())["unet.conv_in.weight"]
    assert torch.allclose(a, b, atol=1e-3) and not torch.equal(a, b)  # rounded through fp16


def test_training_writes_a_stage_and_resumes(tiny_generator, tiny_upsampler, tmp_path):
    stage = UpsamplerStage.load(tiny_upsampler)
    assert stage.card["steps"] == 6 and stage.card["kind"] == "upsampler"
    assert 0 < stage.model.config.residual_scale < 1  # measured on the data, not a constant
    log = [json.loads(x) for x in (tiny_upsampler / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    # resume: a longer budget continues from the checkpoint instead of starting over
    from vigface.training.upsampler import train_upsampler

    out = tmp_path / "resumed"
    shutil.copytree(tiny_upsampler, out)
    cfg = TrainUpsamplerConfig.model_validate(yaml.safe_load(TINY_UPSAMPLER) | {"max_steps": 8})
    more = train_upsampler(cfg, tiny_generator.parent / "train", tiny_generator.parent / "fr",
                           out, progress=False)  # fmt: skip
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert more.card["steps"] == 8 and [r["step"] for r in log] == [2, 4, 6, 8]


def test_config_refuses_impossible_shapes(tmp_path):
    bad = {
        "crop larger than the face": "crop_size: 96",
        "crop not divisible": "crop_size: 18",
        "output not larger": "model: {low_size: 32, sample_size: 32}",
        "groups": "model: {block_out_channels: [32, 64], norm_num_groups: 5}",
    }
    for why, text in bad.items():
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError):
            load_config(p, TrainUpsamplerConfig)
            pytest.fail(why)


def test_sampler_draws_at_the_upsamplers_side_deterministically(store):
    gen = Generator.load(store / "gen_up")
    assert gen.output_size == 32 and gen.dit.config.sample_size == 16
    protos = gen.fr.virtual_prototypes.float().numpy()
    lms = gen.pose_landmarks[0]
    reqs = [ImageRequest(protos[i], lms, seed=100 + i) for i in range(3)]

    def draw(batch_size, upsampler):
        s = Sampler(gen.dit, gen.scheduler, steps=2, guidance=2.0, batch_size=batch_size,
                    precision="fp32", upsampler=upsampler, upsample_steps=2)  # fmt: skip
        return np.concatenate([imgs for _, imgs in s.stream(reqs)])

    one_batch, per_image = draw(3, gen.upsampler), draw(1, gen.upsampler)
    assert one_batch.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(one_batch, per_image)  # an image does not depend on its batch
    assert draw(3, None).shape == (3, 16, 16, 3)
    big = UpsamplerStage(tiny_model(low_size=24, sample_size=48), gen.scheduler)
    with pytest.raises(ValueError, match="24-px"):
        Sampler(gen.dit, gen.scheduler, upsampler=big)


def test_attach_refuses_what_does_not_fit(store, tiny_upsampler, tmp_path):
    card = json.loads((store / "gen_up" / "model_card.json").read_text())
    assert card["sampler_defaults"]["upsample"] is True
    assert card["upsampler"]["sampling_steps"] == 2 and card["upsampler"]["sample_size"] == 32
    r = runner.invoke(cli, ["models", "attach-upsampler", str(store / "gen_up" / "fr"),
                            str(tiny_upsampler)])  # fmt: skip
    assert r.exit_code != 0 and "not a generator" in r.output
    r = runner.invoke(cli, ["models", "attach-upsampler", str(store / "gen"), str(tmp_path)])
    assert r.exit_code != 0 and "not an upsampler folder" in r.output
    other = tmp_path / "other"
    UpsamplerStage(tiny_model(low_size=24, sample_size=48), Generator.load(store / "gen").scheduler
                   ).save(other)  # fmt: skip
    before = sorted(p.name for p in (store / "gen").iterdir())
    r = runner.invoke(cli, ["models", "attach-upsampler", str(store / "gen"), str(other)])
    assert r.exit_code != 0 and "24-px" in r.output
    assert sorted(p.name for p in (store / "gen").iterdir()) == before  # nothing half-written


def test_generate_with_and_without_the_upsampler(store, tmp_path):
    common = ["--identities", "2", "--images-per-identity", "2", "--steps", "2",
              "--tau-leak", "1", "--tau-consistency", "-1"]  # fmt: skip
    r = runner.invoke(cli, ["generate", "--model", str(store / "gen_up"),
                            "--out", str(tmp_path / "up"), *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "up" / "dataset_card.json").read_text())
    assert card["resolution"] == 32 and card["spec"]["upsample"] is True
    assert card["image_size"] == [112, 112]
    r = runner.invoke(cli, ["generate", "--model", str(store / "gen_up"), "--no-upsample",
                            "--out", str(tmp_path / "plain"), *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "plain" / "dataset_card.json").read_text())["resolution"] == 16
    r = runner.invoke(cli, ["generate", "--model", str(store / "gen"), "--upsample",
                            "--out", str(tmp_path / "none"), *common])  # fmt: skip
    assert r.exit_code != 0 and "upsample" in r.output
    assert not (tmp_path / "none" / "dataset_card.json").exists()


def test_judge_calibration_is_taken_at_the_drawn_resolution():
    from vigface.evaluation.judge import calibration_at

    at32 = {"within": 0.3, "between": 0.3, "resolution": 32}
    at64 = {"within": 0.25, "between": 0.35, "resolution": 64}
    card = {"judge": {"real": at32, "resolution": 32, "real_at": {"64": at64}}}
    assert calibration_at(card, 32) == at32 and calibration_at(card, 64) == at64
    assert calibration_at(card, 112) is None  # never compared with real people at another size
    assert calibration_at({}, 64) is None


def test_api_orders_refuse_upsample_on_a_model_without_one(store, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from conftest import embedded_service
    from workers.embedded import EmbeddedWorker

    monkeypatch.setenv("VIGFACE_MODEL_STORE", str(store))
    api, settings, key = embedded_service(tmp_path, "gen", shard_identities=2, sampler_batch_size=4)
    client, h = TestClient(api), {"Authorization": f"Bearer {key}"}
    order = {"identities": 2, "images_per_identity": 2, "steps": 2, "tau_leak": 1.0,
             "tau_consistency": -1.0}  # fmt: skip
    r = client.post("/v1/jobs", json=order | {"upsample": True}, headers=h)
    assert r.status_code == 422 and "upsample" in r.text, r.text
    r = client.post("/v1/jobs", json=order | {"upsample": "yes please"}, headers=h)
    assert r.status_code == 422 and "upsample" in r.text
    r = client.post("/v1/jobs", json=order | {"model": "gen_up"}, headers=h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["spec"]["upsample"] is True  # the card's default, recorded in the job
    worker = EmbeddedWorker(api.state.sessions, settings, poll_s=0.05)
    try:
        while worker.run_once():
            pass
    finally:
        worker.stop()
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=h).json()
    assert report["dataset"]["resolution"] == 32 and report["dataset"]["num_image"] == 4
