"""A latent generator end to end on tiny models: the autoencoder trains and round-trips, the
DiT trains on its latents (the identity term through the decoder), the entry carries the
autoencoder, and the sampler draws full-size faces from it, batch-independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_CONFIG, make_face_folder

TINY_AE = """
model: {block_out_channels: [8, 16], latent_channels: 4, layers_per_block: 1, norm_num_groups: 4}
sample_size: 112
max_steps: 6
batch_size: 4
log_every: 2
checkpoint_every_steps: 3
threads: 1
precision: fp32
"""

TINY_LATENT_DIT = """
model: {sample_size: 56, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}
diffusion: {num_train_timesteps: 100}
identity_loss_weight: 0.1
identity_loss_images: 2
timestep_sampling: logit_normal
loss_weighting: min_snr
repa_weight: 0.5
repa_block: 1
warmup_steps: 2
epochs: 1
batch_size: 8
log_every: 2
checkpoint_every_steps: 4
threads: 1
precision: fp32
"""


@pytest.fixture(scope="module")
def latent_entry(tmp_path_factory):
    from vigface.config import TrainAutoencoderConfig, TrainDiTConfig, TrainFRConfig
    from vigface.training.autoencoder import train_autoencoder
    from vigface.training.dit import train_dit
    from vigface.training.fr import train_fr

    root = tmp_path_factory.mktemp("latent")
    data = make_face_folder(root / "train", identities=4, per_identity=4)
    fr_cfg = TrainFRConfig.model_validate(
        yaml.safe_load(TINY_CONFIG) | {"head": {"scale": 16.0, "margin": 0.3, "num_virtual": 12}}
    )
    train_fr(fr_cfg, data, root / "fr", progress=False)
    ae_cfg = TrainAutoencoderConfig.model_validate(yaml.safe_load(TINY_AE))
    train_autoencoder(ae_cfg, data, root / "fr", root / "ae", progress=False)
    dit_cfg = TrainDiTConfig.model_validate(
        yaml.safe_load(TINY_LATENT_DIT) | {"autoencoder": str(root / "ae" / "autoencoder")}
    )
    train_dit(dit_cfg, data, root / "fr", root / "gen", progress=False)
    return root


def test_the_autoencoder_is_a_diffusers_model_with_its_latent_statistics(latent_entry):
    from diffusers import AutoencoderKL

    from vigface.generator.autoencoder import decode, encode

    folder = latent_entry / "ae" / "autoencoder"
    vae = AutoencoderKL.from_pretrained(folder).eval()
    card = json.loads((folder / "card.json").read_text())
    assert card["kind"] == "autoencoder" and card["steps"] == 6
    assert vae.config.scaling_factor != 1.0  # measured at the end of the run
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        z = encode(vae, x)
        assert z.shape == (2, 4, 56, 56)
        assert decode(vae, z).shape == x.shape
    log = [json.loads(line) for line in (latent_entry / "ae" / "train_log.jsonl").open()]
    assert [r["step"] for r in log] == [2, 4, 6] and all(r["l1"] > 0 for r in log)


def test_a_resumed_autoencoder_run_continues_from_its_checkpoint(latent_entry, tmp_path):
    import shutil

    from vigface.config import TrainAutoencoderConfig
    from vigface.training.autoencoder import train_autoencoder

    shutil.copytree(latent_entry / "ae", tmp_path / "ae")
    cfg = TrainAutoencoderConfig.model_validate(yaml.safe_load(TINY_AE) | {"max_steps": 8})
    train_autoencoder(cfg, latent_entry / "train", latent_entry / "fr", tmp_path / "ae",
                      progress=False)  # fmt: skip
    log = [json.loads(line) for line in (tmp_path / "ae" / "train_log.jsonl").open()]
    assert [r["step"] for r in log] == [2, 4, 6, 8]


def test_the_latent_generator_carries_its_autoencoder_and_draws_full_size_faces(latent_entry):
    from vigface.generator.artifact import Generator
    from vigface.sampler_settings import SamplerSettings
    from vigface.sampling import ImageRequest, Sampler

    gen = Generator.load(latent_entry / "gen")
    assert gen.autoencoder is not None and gen.card["latent"] is True
    assert gen.card["autoencoder"]["kind"] == "autoencoder"
    assert gen.output_size == 112 and gen.dit.config.in_channels == 4
    log = [json.loads(line) for line in (latent_entry / "gen" / "train_log.jsonl").open()]
    assert all("repa_loss" in r and "id_loss" in r for r in log)
    settings = SamplerSettings(steps=3, guidance=2.0)
    sampler = Sampler.for_generator(gen, settings, batch_size=3)
    lms = np.tile(np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], np.float32), (1, 1))
    reqs = [ImageRequest(gen.fr.virtual_prototypes[i % 4].numpy(), lms, 100 + i) for i in range(3)]
    together = np.concatenate([imgs for _, imgs in sampler.stream(reqs)])
    assert together.shape == (3, 112, 112, 3) and together.dtype == np.uint8
    alone = Sampler.for_generator(gen, settings, batch_size=1)
    one = np.concatenate([imgs for _, imgs in alone.stream(reqs[1:2])])
    assert np.abs(one.astype(int) - together[1:2].astype(int)).max() <= 1


def test_a_latent_run_reuses_its_encoded_faces_and_refuses_a_wrong_latent_side(
    latent_entry, tmp_path
):
    from vigface.config import TrainDiTConfig
    from vigface.data import DatasetError
    from vigface.fr_model import FRModel
    from vigface.generator.autoencoder import load_autoencoder
    from vigface.training.dit_data import load_face_set

    ae = latent_entry / "ae" / "autoencoder"
    cfg = TrainDiTConfig.model_validate(yaml.safe_load(TINY_LATENT_DIT) | {"autoencoder": str(ae)})
    fr = FRModel.load(latent_entry / "fr")
    vae = load_autoencoder(ae)
    faces = load_face_set(cfg, latent_entry / "train", fr, latent_entry / "gen", vae, False)
    assert faces.latent and faces.images.shape[:3] == (2, 16, 4)
    assert faces.repa is not None and faces.repa.dtype == torch.float16
    x0, heat, rows, repa = faces.batch(torch.arange(4), torch.tensor([1, 0, 0, 1]).bool(), "cpu")
    torch.testing.assert_close(x0[0], faces.images[1][0])  # the mirrored face's own latent
    assert heat.shape == (4, 5, 56, 56)
    wrong = cfg.model_copy(update={"model": cfg.model.model_copy(update={"sample_size": 28})})
    with pytest.raises(DatasetError, match="latents are 56"):
        load_face_set(wrong, latent_entry / "train", fr, latent_entry / "gen", vae, False)


def test_a_decoder_leg_keeps_the_encoder_and_the_latent_statistics(latent_entry, tmp_path):
    """train_encoder: false from an autoencoder: the encoder's weights and the shift and
    scale a generator trained on its latents depend on stay as they were."""
    from diffusers import AutoencoderKL

    from vigface.config import TrainAutoencoderConfig
    from vigface.training.autoencoder import train_autoencoder

    source = latent_entry / "ae" / "autoencoder"
    cfg = TrainAutoencoderConfig.model_validate(
        yaml.safe_load(TINY_AE) | {"max_steps": 2, "train_encoder": False}
    )
    train_autoencoder(cfg, latent_entry / "train", latent_entry / "fr", tmp_path / "dec",
                      progress=False, init_from=source)  # fmt: skip
    before, after = (
        AutoencoderKL.from_pretrained(source),
        AutoencoderKL.from_pretrained(tmp_path / "dec" / "autoencoder"),
    )
    assert after.config.scaling_factor == before.config.scaling_factor
    assert after.config.shift_factor == before.config.shift_factor
    for (k, a), (_, b) in zip(before.encoder.state_dict().items(),
                              after.encoder.state_dict().items(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, msg=k)
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(before.decoder.parameters(), after.decoder.parameters(), strict=True)
    )
    assert changed


def test_a_dataset_from_a_latent_generator_is_written_at_the_decoders_side(latent_entry, tmp_path):
    """The pipeline does not care that the generator is latent: it draws, filters and writes
    112-px faces, and the dataset card says it drew at 112."""
    import shutil

    from vigface.dataset.pipeline import DatasetBuilder
    from vigface.dataset.spec import DatasetSpec, resolve_spec
    from vigface.generator.artifact import Generator

    entry = tmp_path / "gen"
    shutil.copytree(latent_entry / "gen", entry)
    card = json.loads((entry / "model_card.json").read_text())
    card["filters"] = {"tau_leak": 1.0, "tau_consistency": -1.0}
    (entry / "model_card.json").write_text(json.dumps(card))
    gen = Generator.load(entry)
    spec = resolve_spec(DatasetSpec(identities=2, images_per_identity=2, steps=2), gen.card)
    report = DatasetBuilder(gen, spec, tmp_path / "ds", progress=False).run()
    assert report["dataset"]["resolution"] == 112 and report["dataset"]["num_image"] == 4
    from PIL import Image

    files = sorted((tmp_path / "ds" / "imagefolder").glob("*/*.jpg"))
    assert len(files) == 4 and Image.open(files[0]).size == (112, 112)


def test_sigint_ends_an_autoencoder_leg_with_its_checkpoint_and_artifact(latent_entry, tmp_path):
    """What Ctrl-C or ``docker stop`` does to a background leg: the step in flight finishes,
    the checkpoint and the autoencoder are written, the command exits 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "ae.yaml"
    config.write_text(TINY_AE.replace("max_steps: 6", "max_steps: 100000"))
    out = tmp_path / "ae"
    args = ["train-autoencoder", "--config", config, "--data", latent_entry / "train",
            "--fr", latent_entry / "fr", "--out", out]  # fmt: skip
    command = [sys.executable, "-m", "app.cli", *map(str, args)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 240
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None:
        assert time.time() < deadline, "no training step logged in 240 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGINT" in output and "stopping at step" in output
    steps = [json.loads(line)["step"] for line in log.open()]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] >= steps[-1] >= 2 and state["step"] < 100000
    assert (out / "autoencoder" / "config.json").is_file()


def test_the_latent_cache_key_is_the_encoder_and_the_latent_scale(latent_entry, tmp_path):
    """The entry's copy of the autoencoder (diffusers writes its path into the config) and a
    decoder trained on key the same cached latents; another encoder or latent scale does not."""
    from vigface.generator.autoencoder import load_autoencoder, save_autoencoder
    from vigface.training.dit_data import latent_space_digest

    source = latent_entry / "ae" / "autoencoder"
    vae = load_autoencoder(source)
    save_autoencoder(vae, tmp_path / "copy", {"kind": "autoencoder", "note": "another card"})
    assert latent_space_digest(tmp_path / "copy") == latent_space_digest(source)
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(0.01)
    save_autoencoder(vae, tmp_path / "decoder")
    assert latent_space_digest(tmp_path / "decoder") == latent_space_digest(source)
    vae.register_to_config(scaling_factor=vae.config.scaling_factor * 2)
    save_autoencoder(vae, tmp_path / "scaled")
    assert latent_space_digest(tmp_path / "scaled") != latent_space_digest(source)
    for part in ("encoder", "quant_conv"):
        vae = load_autoencoder(source)
        with torch.no_grad():
            next(getattr(vae, part).parameters()).add_(0.01)
        save_autoencoder(vae, tmp_path / part)
        assert latent_space_digest(tmp_path / part) != latent_space_digest(source)


def test_a_decoder_leg_folds_into_a_latent_entry_and_a_later_dit_leg_keeps_it(
    latent_entry, tmp_path
):
    """``vigface models add DEC --continues ENTRY`` puts a decoder trained alone into the
    entry (autoencoder steps accumulate, the old faces' thresholds and grids go); a DiT leg
    trained meanwhile with the old decoder does not bring it back; an autoencoder run that
    trained its encoder, or a decoder started from another autoencoder, is refused and the
    entry stays as it was."""
    from typer.testing import CliRunner

    from app.cli import app
    from conftest import TERMS_FILE
    from vigface.config import TrainDiTConfig
    from vigface.training.dit import train_dit
    from vigface.training.dit_data import latent_space_digest

    runner = CliRunner()
    store = tmp_path / "st"
    r = runner.invoke(app, ["models", "add", str(latent_entry / "gen"), "--name", "lat",
                            "--store", str(store), "--terms", TERMS_FILE])  # fmt: skip
    assert r.exit_code == 0, r.output
    entry = store / "lat"
    card = json.loads((entry / "model_card.json").read_text())
    card["filters"] = {"tau_leak": 0.9, "tau_consistency": 0.1}
    (entry / "model_card.json").write_text(json.dumps(card))
    (entry / "grids").mkdir()
    (entry / "grids" / "old.png").write_bytes(b"old faces")
    (entry / "measurements").mkdir(exist_ok=True)
    (entry / "measurements" / "training_curve.json").write_text('[{"steps": 6}]')
    (entry / "measurements" / "face_quality.json").write_text('{"of": "the old faces"}')
    old_ae = (entry / "autoencoder" / "diffusion_pytorch_model.safetensors").read_bytes()
    ae_yaml = tmp_path / "ae.yaml"
    ae_yaml.write_text(TINY_AE.replace("max_steps: 6", "max_steps: 2"))

    def train_ae(out, *extra):
        r = runner.invoke(app, ["train-autoencoder", "--config", str(ae_yaml), "--data",
                                str(latent_entry / "train"), "--fr", str(entry / "fr"),
                                "--out", str(out), *extra])  # fmt: skip
        assert r.exit_code == 0, r.output

    def fold(run):
        return runner.invoke(app, ["models", "add", str(run), "--name", "lat", "--store",
                                   str(store), "--continues", str(entry), "--replace"])  # fmt: skip

    train_ae(tmp_path / "both", "--init-from", str(entry))  # encoder trained too
    before = {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()}
    r = fold(tmp_path / "both")
    assert r.exit_code == 2 and "train_encoder=false" in r.output
    assert {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()} == before

    # the decoder alone, but started from another autoencoder folder: not this entry's leg
    train_ae(tmp_path / "other", "--init-from", str(latent_entry / "ae" / "autoencoder"),
             "--set", "train_encoder=false")  # fmt: skip
    r = fold(tmp_path / "other")
    assert r.exit_code == 2 and "not from" in r.output
    assert {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()} == before

    train_ae(tmp_path / "dec", "--init-from", str(entry), "--set", "train_encoder=false")
    r = fold(tmp_path / "dec")
    assert r.exit_code == 0, r.output
    assert "card: filters" in r.output and "grids/" in r.output
    assert "measurements/face_quality.json" in r.output  # listed as left behind, and gone
    assert sorted(p.name for p in (entry / "measurements").iterdir()) == [
        "training_curve.json",
        "training_legs.json",
    ]
    assert (entry / "measurements" / "training_curve.json").read_text() == '[{"steps": 6}]'
    new_ae = (entry / "autoencoder" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (
        new_ae != old_ae
        and new_ae
        == (tmp_path / "dec" / "autoencoder" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    card = json.loads((entry / "model_card.json").read_text())
    assert "filters" not in card and not (entry / "grids").exists()
    assert card["autoencoder"]["steps"] == 6 + 2 and card["autoencoder"]["encoder_steps"] == 6
    assert json.loads((entry / "autoencoder" / "card.json").read_text()) == card["autoencoder"]
    legs = json.loads((entry / "measurements" / "training_legs.json").read_text())
    assert legs[-1]["part"] == "decoder" and legs[-1]["config"]["train_encoder"] is False
    assert (
        card["steps"] == json.loads((latent_entry / "gen" / "model_card.json").read_text())["steps"]
    )  # the transformer did not train

    # a DiT leg that drew its identity term through the old decoder: the entry keeps the new
    dit_cfg = yaml.safe_load(TINY_LATENT_DIT) | {
        "autoencoder": str(latent_entry / "ae" / "autoencoder"),
        "init_from": str(entry),
    }
    train_dit(TrainDiTConfig.model_validate(dit_cfg), latent_entry / "train", entry / "fr",
              tmp_path / "leg", progress=False)  # fmt: skip
    assert latent_space_digest(tmp_path / "leg" / "autoencoder") == latent_space_digest(
        entry / "autoencoder"
    )
    r = fold(tmp_path / "leg")
    assert r.exit_code == 0, r.output
    kept = (entry / "autoencoder" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert kept == new_ae
    assert json.loads((entry / "model_card.json").read_text())["autoencoder"]["steps"] == 8
