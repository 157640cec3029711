"""Stage 2: v-prediction arithmetic, CFG, condition dropout, determinism, save/load, training."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app
from conftest import TERMS_FILE, TINY_DIT, image_requests
from vigface.config import TrainDiTConfig
from vigface.generator.artifact import Generator
from vigface.generator.diffusion import (
    cfg_combine,
    ddim_step,
    predict_x0,
    sampling_scheduler,
    training_scheduler,
    v_target,
)
from vigface.generator.dit import FaceDiT
from vigface.generator.landmarks import render_heatmaps
from vigface.sampling import Sampler, image_seed
from vigface.training.dit import warm_start
from vigface.training.dit_data import trainable_virtual_prototypes
from vigface.training.dit_loss import DiTLoss

runner = CliRunner()


def tiny_dit(identity_dim=8, seed=0):
    torch.manual_seed(seed)
    m = FaceDiT(
        sample_size=16,
        patch_size=2,
        hidden_size=32,
        depth=2,
        num_heads=2,
        identity_dim=identity_dim,
    )
    for p in m.parameters():  # leave adaLN-Zero's zero init so outputs depend on inputs
        torch.nn.init.normal_(p, 0, 0.05)
    return m.eval()


def test_v_target_matches_scheduler_velocity():
    sched = training_scheduler()
    x0, noise = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 10, 250, 500, 900, 999])
    torch.testing.assert_close(v_target(sched, x0, noise, t), sched.get_velocity(x0, noise, t))


def test_x0_from_v_matches_scheduler_step():
    sched = training_scheduler()
    x0, noise = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    for t in (5, 300, 800):
        tt = torch.tensor([t])
        x_t = sched.add_noise(x0, noise, tt)
        v = v_target(sched, x0, noise, tt)
        # DDPMScheduler's own v -> x0 conversion inside step()
        ref = sched.step(v, t, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
        torch.testing.assert_close(predict_x0(sched, x_t, v, tt), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(predict_x0(sched, x_t, v, tt), x0, rtol=1e-3, atol=1e-3)


def test_cfg_combination():
    c, u = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(cfg_combine(c, u, 4.0), torch.tensor([5.0, -7.0]))
    torch.testing.assert_close(cfg_combine(c, u, 1.0), c)
    torch.testing.assert_close(cfg_combine(c, u, 0.0), u)


def test_batched_cfg_equals_two_separate_passes():
    dit, sched = tiny_dit(), training_scheduler()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    lms = rng.uniform(30, 80, (3, 5, 2)).astype(np.float32)
    seeds = [image_seed(0, i, 0) for i in range(3)]
    batched = Sampler(dit, sched, steps=4, guidance=3.0).sample(
        torch.from_numpy(w), torch.from_numpy(lms), seeds
    )
    # reference: the naive two-pass loop, image by image
    from vigface.sampling import initial_noise, to_uint8

    for i in range(3):
        s = sampling_scheduler(sched)
        s.set_timesteps(4)
        x = initial_noise(seeds[i], 16)[None] * s.init_noise_sigma
        wi = torch.nn.functional.normalize(torch.from_numpy(w[i : i + 1]), dim=1)
        heat = render_heatmaps(torch.from_numpy(lms[i : i + 1]), 16)
        with torch.no_grad():
            for t in s.timesteps:
                tt = t.expand(1)
                vc = dit(s.scale_model_input(x, t), tt, wi, heat)
                vu = dit(s.scale_model_input(x, t), tt, torch.zeros_like(wi), heat)
                x = s.step(vu + 3.0 * (vc - vu), t, x).prev_sample
        diff = np.abs(to_uint8(x)[0].astype(int) - batched[i].astype(int))
        assert diff.max() <= 1


def test_condition_dropout_rate():
    torch.manual_seed(0)
    cfg = TrainDiTConfig(identity_loss_weight=0.0)
    dit = tiny_dit()
    seen = []
    orig = dit.forward

    def spy(x, t, w, heat):
        seen.append((w.abs().sum(1) == 0).float())
        return orig(x, t, w, heat)

    dit.forward = spy

    # identity loss is off; the FR model is never called
    loss = DiTLoss(dit, torch.nn.Identity(), training_scheduler(), cfg)
    for _ in range(50):
        loss(torch.randn(200, 3, 16, 16), torch.zeros(200, 5, 16, 16), torch.randn(200, 8))
    rate = float(torch.cat(seen).mean())
    assert abs(rate - 0.1) < 0.015  # 10,000 draws: std 0.003


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_image_is_the_same_whatever_its_batch(precision):
    dit, sched = tiny_dit(), training_scheduler()
    reqs = image_requests(7, rng_seed=1, job_seed=7, image_index=3)
    seven = Sampler(dit, sched, steps=5, batch_size=7, precision=precision)
    one = Sampler(dit, sched, steps=5, batch_size=1, precision=precision)
    a = np.concatenate([im for _, im in seven.stream(reqs)])
    b = np.concatenate([im for _, im in one.stream(reqs)])
    assert a.shape == (7, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    alone = one.sample(
        torch.from_numpy(reqs[4].identity[None]),
        torch.from_numpy(reqs[4].landmarks[None]),
        [reqs[4].seed],
    )
    np.testing.assert_array_equal(alone[0], a[4])
    assert not np.array_equal(a[0], a[1])


def test_image_seed_is_stable_and_distinct():
    assert image_seed(1, 2, 3) == image_seed(1, 2, 3)
    assert len({image_seed(1, i, j) for i in range(20) for j in range(20)}) == 400
    assert image_seed(1, 2, 3) != image_seed(1, 2, 3, attempt=1)


def test_heatmaps_peak_at_landmarks():
    pts = torch.tensor([[[28.0, 28.0], [84.0, 28.0], [56.0, 56.0], [40.0, 90.0], [72.0, 90.0]]])
    h = render_heatmaps(pts, 28)
    assert h.shape == (1, 5, 28, 28) and h.max() <= 1 and h.min() >= -1
    ys, xs = np.unravel_index(h[0, 2].argmax().item(), (28, 28))
    assert (ys, xs) == (13, 13) or (ys, xs) == (14, 14)


def test_dit_save_pretrained_round_trip(tmp_path):
    dit = tiny_dit()
    dit.save_pretrained(tmp_path / "dit")
    assert (tmp_path / "dit" / "diffusion_pytorch_model.safetensors").is_file()
    back = FaceDiT.from_pretrained(tmp_path / "dit").eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    w, heat = torch.randn(2, 8), torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, w, heat), dit(x, t, w, heat))
    assert back.config.hidden_size == 32


@pytest.mark.slow
def test_train_dit_cli_end_to_end(face_folder, tiny_config, tmp_path):
    fr_dir = tmp_path / "fr"
    r = runner.invoke(
        app,
        [
            "train-fr",
            "--config",
            str(tiny_config),
            "--data",
            str(face_folder),
            "--out",
            str(fr_dir),
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "dit.yaml"
    cfg.write_text(TINY_DIT)
    out = tmp_path / "gen"
    r = runner.invoke(
        app,
        [
            "train-dit",
            "--config",
            str(cfg),
            "--data",
            str(face_folder),
            "--fr",
            str(fr_dir),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 12 and all(np.isfinite(x["v_loss"]) for x in log)
    assert (out / "loss_curve.png").is_file() and (out / "checkpoints" / "last.pt").is_file()
    gen = Generator.load(out)
    assert gen.pose_landmarks.shape == (48, 5, 2)
    assert gen.card["kind"] == "generator" and gen.card["num_virtual"] == 4
    # resume: asking for more epochs continues from step 12, not from scratch
    r = runner.invoke(
        app,
        [
            "train-dit",
            "--config",
            str(cfg),
            "--data",
            str(face_folder),
            "--fr",
            str(fr_dir),
            "--out",
            str(out),
            "--set",
            "epochs=3",
            "--set",
            "pose_balance=0.5",  # the weighted draw continues the run as well
        ],
    )
    assert r.exit_code == 0, r.output
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 18

    # bundling: float16 weights and prototypes, loaded back as float32 that behave the same
    r = runner.invoke(
        app,
        ["models", "add", str(out), "--name", "tiny", "--store", str(tmp_path / "st"),
         "--terms", TERMS_FILE],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    small = Generator.load(tmp_path / "st" / "tiny")
    assert not (tmp_path / "st" / "tiny" / "checkpoints").exists()
    assert small.dit.dtype == torch.float32
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    w, heat = torch.randn(2, 32), torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            small.dit(x, t, w, heat), gen.dit(x, t, w, heat), atol=5e-2, rtol=0
        )
    torch.testing.assert_close(
        small.fr.virtual_prototypes, gen.fr.virtual_prototypes, atol=1e-3, rtol=1e-3
    )
    r = runner.invoke(
        app,
        ["models", "add", str(out), "--name", "tiny", "--store", str(tmp_path / "st"),
         "--terms", TERMS_FILE],
    )  # fmt: skip
    assert r.exit_code == 2 and "exists" in r.output

    grid = tmp_path / "grid.png"
    r = runner.invoke(
        app,
        [
            "sample",
            "--model",
            str(out),
            "--group",
            "virtual",
            "--identities",
            "2",
            "--poses",
            "3",
            "--steps",
            "3",
            "--out",
            str(grid),
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["images"] == 6
    # the printed number is the identity fidelity of exactly these draws
    from vigface.evaluation.identity import identity_fidelity
    from vigface.generator.grid import pose_columns

    g = Generator.load(out)
    direct = identity_fidelity(g, "virtual", 2, pose_columns(g.pose_landmarks, 3), 4.0, 3, 0)
    assert res["cos_own_mean"] == pytest.approx(direct["cos_own_mean"], abs=1e-5)
    from PIL import Image

    assert Image.open(grid).size == (2 * (3 * 18 + 2), 2 * (2 * 18 + 2))


def test_train_dit_rejects_unknown_identities(face_folder, tiny_config, tmp_path):
    from conftest import make_face_folder

    r = runner.invoke(
        app,
        [
            "train-fr",
            "--config",
            str(tiny_config),
            "--data",
            str(face_folder),
            "--out",
            str(tmp_path / "fr"),
            "--set",
            "epochs=1",
        ],
    )
    assert r.exit_code == 0, r.output
    other = make_face_folder(tmp_path / "other", identities=7, per_identity=2)
    cfg = tmp_path / "dit.yaml"
    cfg.write_text(TINY_DIT)
    r = runner.invoke(
        app,
        [
            "train-dit",
            "--config",
            str(cfg),
            "--data",
            str(other),
            "--fr",
            str(tmp_path / "fr"),
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert r.exit_code == 2 and "no prototype" in r.output


def test_identity_loss_trains_the_dit_through_a_frozen_fr_model():
    fr = _tiny_fr()
    backbone = fr.embedder
    dit = tiny_dit().train()
    cfg = TrainDiTConfig(
        identity_loss_weight=1.0, identity_loss_min_alpha_bar=0.0, cond_drop_prob=0.0
    )
    loss_mod = DiTLoss(dit, fr.embedder, training_scheduler(), cfg).train()
    assert not loss_mod.fr.training  # stays in eval mode
    w = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    total, terms = loss_mod(torch.rand(4, 3, 16, 16) * 2 - 1, torch.zeros(4, 5, 16, 16), w)
    assert float(terms["id_loss"]) > 0
    assert "virtual_id_loss" not in terms  # no virtual term unless asked for
    torch.testing.assert_close(total.detach(), terms["v_loss"] + terms["id_loss"])
    total.backward()
    assert all(p.grad is None for p in backbone.parameters())
    assert dit.identity_embed[0].weight.grad.abs().sum() > 0


def _tiny_fr(num_real=3, num_virtual=2, dim=8):
    from vigface.backbones import IResNet
    from vigface.config import TrainFRConfig
    from vigface.fr_model import FRModel

    torch.manual_seed(0)
    backbone = IResNet((1, 1, 1, 1), (4, 4, 8, 8), input_size=16, num_features=dim).eval()
    names = [f"id{i}" for i in range(num_real)]
    return FRModel(
        TrainFRConfig(),
        backbone,
        torch.randn(num_real, dim),
        torch.randn(num_virtual, dim),
        torch.ones(dim),
        names,
    )


def test_virtual_identity_term_renders_virtual_prototypes_and_trains_only_the_dit():
    fr = _tiny_fr()
    dit = tiny_dit().train()
    cfg = TrainDiTConfig(
        identity_loss_weight=0.0,
        virtual_identity_fraction=0.5,
        virtual_identity_weight=2.0,
        virtual_identity_steps=2,
        virtual_identity_guidance=3.0,
        virtual_identity_holdout=1,
    )
    virtual = trainable_virtual_prototypes(fr, cfg)
    assert virtual.shape == (1, 8)  # the held-out last row is never rendered in training
    torch.testing.assert_close(
        virtual[0], torch.nn.functional.normalize(fr.virtual_prototypes[0], dim=0)
    )
    loss_mod = DiTLoss(dit, fr.embedder, training_scheduler(), cfg).train()
    w = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    x0, heat = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 5, 16, 16)
    total, terms = loss_mod(x0, heat, w, virtual)
    assert 0 < float(terms["virtual_id_loss"]) <= 4 and "id_loss" not in terms
    torch.testing.assert_close(total.detach(), terms["v_loss"] + 2.0 * terms["virtual_id_loss"])
    total.backward()
    assert all(p.grad is None for p in fr.embedder.parameters())
    assert dit.identity_embed[0].weight.grad.abs().sum() > 0

    with pytest.raises(Exception, match="virtual_identity_holdout"):
        trainable_virtual_prototypes(fr, cfg.model_copy(update={"virtual_identity_holdout": 2}))
    assert trainable_virtual_prototypes(fr, TrainDiTConfig()) is None


def test_warm_start_copies_weights_and_rejects_another_architecture(tmp_path):
    from vigface.data import DatasetError

    src = tiny_dit(seed=3)
    src.save_pretrained(tmp_path / "gen" / "dit")
    dst = tiny_dit(seed=4)
    warm_start(dst, tmp_path / "gen")
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    other = FaceDiT(
        sample_size=16, patch_size=2, hidden_size=32, depth=3, num_heads=2, identity_dim=8
    )
    with pytest.raises(DatasetError, match="depth"):
        warm_start(other, tmp_path / "gen")
    with pytest.raises(DatasetError, match="not a generator"):
        warm_start(dst, tmp_path)


@pytest.mark.slow  # inductor compilation: about 6 s
def test_compiled_sampler_draws_the_same_images():
    dit, sched = tiny_dit(), training_scheduler()
    reqs = image_requests(4, rng_seed=2, job_seed=1, image_index=0)
    eager = np.concatenate(
        [im for _, im in Sampler(dit, sched, steps=4, batch_size=4, precision="fp32").stream(reqs)]
    )
    compiled = Sampler(dit, sched, steps=4, batch_size=4, compile=True, precision="fp32")
    fast = np.concatenate([im for _, im in compiled.stream(reqs)])
    assert np.abs(eager.astype(int) - fast.astype(int)).max() <= 1  # float rounding only


def test_ddim_step_matches_the_scheduler_on_its_grid():
    from diffusers import DDIMScheduler

    train = training_scheduler()
    ddim = DDIMScheduler.from_config(
        train.config, prediction_type="v_prediction", timestep_spacing="trailing"
    )
    ddim.set_timesteps(4)
    x, v = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t, t_prev = int(ddim.timesteps[1]), int(ddim.timesteps[2])
    expected = ddim.step(v, t, x).prev_sample
    torch.testing.assert_close(ddim_step(train, x, v, t, t_prev), expected, atol=1e-5, rtol=1e-5)


def test_precision_resolution_and_bf16_images_stay_close_to_fp32(monkeypatch):
    from vigface import precision as prec

    cpu = torch.device("cpu")
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n"
    assert prec.cpuinfo_has_bf16(x86)
    assert not prec.cpuinfo_has_bf16("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert prec.cpuinfo_has_bf16("Features\t: fp asimd bf16 i8mm\n")
    assert prec.autocast_dtype("fp32", torch.device("cuda")) == torch.float32
    assert prec.autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.autocast_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.autocast_dtype("auto", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        prec.autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="precision"):
        Sampler(tiny_dit(), training_scheduler(), precision="half")

    dit, sched = tiny_dit(), training_scheduler()
    reqs = image_requests(4, rng_seed=3, job_seed=2, image_index=0)
    full = Sampler(dit, sched, steps=4, batch_size=4, precision="fp32")
    half = Sampler(dit, sched, steps=4, batch_size=4, precision="bf16")
    assert (full.dtype, half.dtype) == (torch.float32, torch.bfloat16)
    a = np.concatenate([im for _, im in full.stream(reqs)]).astype(int)
    b = np.concatenate([im for _, im in half.stream(reqs)]).astype(int)
    assert not np.array_equal(a, b)  # bf16 really ran
    assert np.abs(a - b).mean() < 3  # ... and changes pixels by rounding only


def test_each_loss_term_is_a_named_function():
    """The paper's two terms and the project's extras, each testable alone."""
    import torch.nn.functional as F

    from vigface.training.dit_loss import denoising_loss, identity_loss, margin_term

    w = F.normalize(torch.randn(4, 8), dim=1)
    assert torch.allclose(identity_loss(w, w), torch.zeros(4))
    other = F.normalize(torch.randn(4, 8), dim=1)
    assert torch.allclose(identity_loss(w, other), 2 - 2 * (w * other).sum(1), atol=1e-6)
    v = torch.randn(2, 3, 4, 4)
    assert denoising_loss(v, v) == 0 and denoising_loss(v, v + 1) == 1
    bank = F.normalize(torch.randn(6, 8), dim=1)
    assert (margin_term(w, w, bank, margin=0.0) == 0).all()  # own prototype: cos 1, nearest
