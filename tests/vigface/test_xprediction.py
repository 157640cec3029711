"""The 112-px generator's parts (issue 30): x-prediction, the shifted schedule, JiT's
bottleneck patch embedding, landmark dropout, two-condition guidance and warm starts across
pixel sides. Each is checked against the quantity it must equal, on tiny models."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from conftest import image_requests
from vigface.config import TrainDiTConfig
from vigface.dataset.spec import DatasetSpec, PoseGuidanceUnsupported, resolve_spec
from vigface.generator.diffusion import (
    MIN_NOISE_STD,
    cfg_combine,
    predict_x0,
    sampling_scheduler,
    shifted_cosine_betas,
    to_velocity,
    training_scheduler,
    two_condition_cfg,
    v_target,
    velocity_loss_target,
)
from vigface.generator.dit import FaceDiT
from vigface.sampling import Sampler
from vigface.training.dit import warm_start
from vigface.training.dit_loss import DiTLoss

FILTERS = {"filters": {"tau_consistency": 0.5, "tau_leak": 0.6}}


def x_dit(sample_size=28, patch_size=7, bottleneck=8, seed=0, pose_embedding=False, randomize=True):
    """A 2-block pixel-patch DiT; ``randomize`` replaces its initialisation (zero-initialised
    output and pose layers) with small random weights, as a trained model has."""
    torch.manual_seed(seed)
    m = FaceDiT(
        sample_size=sample_size,
        patch_size=patch_size,
        hidden_size=32,
        depth=2,
        num_heads=2,
        identity_dim=8,
        patch_bottleneck=bottleneck,
        pose_embedding=pose_embedding,
    )
    if randomize:
        for p in m.parameters():
            torch.nn.init.normal_(p, 0, 0.05)
    return m.eval()


def test_the_shifted_schedule_is_diffusers_cosine_at_one_and_noisier_above():
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.numpy()
    assert np.allclose(shifted_cosine_betas(1000, 1.0), ref, atol=1e-6)
    plain, shifted = training_scheduler(), training_scheduler(resolution_shift=1.75)
    mid = [100, 250, 500, 750]

    # log-SNR moves by -2 log k at every interior step
    def log_snr(s, t):
        a = s.alphas_cumprod[t].double()
        return torch.log(a / (1 - a))

    diff = log_snr(shifted, mid) - log_snr(plain, mid)
    assert torch.allclose(diff, torch.full_like(diff, -2 * np.log(1.75)), atol=0.02)
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        training_scheduler(beta_schedule="linear", resolution_shift=2.0)
    with pytest.raises(ValueError, match="prediction_type"):
        training_scheduler(prediction_type="epsilon")


def test_x_prediction_arithmetic_matches_v_prediction():
    v_sched, x_sched = training_scheduler(), training_scheduler(prediction_type="sample")
    x0, noise = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    x_t = v_sched.add_noise(x0, noise, t)
    v = v_target(v_sched, x0, noise, t)
    # the clean image a network outputs is the clean image; its velocity is the true v
    assert torch.equal(predict_x0(x_sched, x_t, x0, t), x0)
    torch.testing.assert_close(to_velocity(x_sched, x_t, x0, t), v, atol=2e-3, rtol=1e-3)
    assert torch.equal(to_velocity(v_sched, x_t, v, t), v)
    # the loss target: with the clamp the loss is |x0_hat - x0|^2 / max(b, 0.05)^2
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    got = (
        (
            to_velocity(x_sched, x_t, x0_hat, t, MIN_NOISE_STD)
            - velocity_loss_target(x_sched, x_t, x0, noise, t)
        )
        .pow(2)
        .mean((1, 2, 3))
    )
    b = (1 - x_sched.alphas_cumprod[t]).sqrt().clamp(min=MIN_NOISE_STD)
    want = (x0_hat - x0).pow(2).mean((1, 2, 3)) / b**2
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    # the solvers are built predicting what the training scheduler predicts
    for name in ("dpmsolver", "unipc", "ddim"):
        assert sampling_scheduler(x_sched, name).config.prediction_type == "sample"
        assert sampling_scheduler(v_sched, name).config.prediction_type == "v_prediction"


def test_an_x_prediction_solver_step_equals_the_v_prediction_step_it_implies():
    """Guiding on x0 or on v gives the same step: the sampler need not know the type."""
    v_sched, x_sched = training_scheduler(), training_scheduler(prediction_type="sample")
    x = torch.randn(2, 3, 8, 8)
    x0_c, x0_u = torch.randn_like(x), torch.randn_like(x)
    sv, sx = sampling_scheduler(v_sched, "ddim"), sampling_scheduler(x_sched, "ddim")
    sv.set_timesteps(10)
    sx.set_timesteps(10)
    t = sv.timesteps[3]
    tt = t.expand(2)
    v_c, v_u = to_velocity(x_sched, x, x0_c, tt), to_velocity(x_sched, x, x0_u, tt)
    step_x = sx.step(cfg_combine(x0_c, x0_u, 3.0), t, x).prev_sample
    step_v = sv.step(cfg_combine(v_c, v_u, 3.0), t, x).prev_sample
    torch.testing.assert_close(step_x, step_v, atol=1e-4, rtol=1e-4)


def test_two_condition_guidance():
    both, pose, none = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([0.5])
    torch.testing.assert_close(
        two_condition_cfg(both, pose, none, 4.0, 1.0), cfg_combine(both, pose, 4.0)
    )
    # u + g_p (u_p - u) + g (u_pw - u_p) = 0.5 + 2 * 1.5 + 4 * 1
    torch.testing.assert_close(two_condition_cfg(both, pose, none, 4.0, 2.0), torch.tensor([7.5]))


def test_the_sampler_draws_with_an_x_prediction_dit_and_pose_guidance_adds_a_third_part():
    dit = x_dit()
    sched = training_scheduler(prediction_type="sample", resolution_shift=1.75)
    reqs = image_requests(3, rng_seed=0, job_seed=1, image_index=0)
    plain = Sampler(dit, sched, steps=4, guidance=2.0, batch_size=3, precision="fp32")
    posed = Sampler(
        dit, sched, steps=4, guidance=2.0, batch_size=3, precision="fp32", pose_guidance=3.0
    )
    sizes = []
    orig = dit.forward
    dit.forward = lambda x, t, w, h: (sizes.append(len(x)), orig(x, t, w, h))[1]
    posed.forward = plain.forward = dit.forward
    a = np.concatenate([imgs for _, imgs in plain.stream(reqs)])
    b = np.concatenate([imgs for _, imgs in posed.stream(reqs)])
    assert a.shape == (3, 28, 28, 3) and a.dtype == np.uint8
    assert sizes == [6] * 4 + [9] * 4  # (w, pose), (0, pose) [, (0, no pose)]
    assert not np.array_equal(a, b)  # the pose weight changes the faces
    assert (plain.forwards_per_image(), posed.forwards_per_image()) == (8.0, 12.0)
    # g 1 and g_p 1 is the conditional model alone; g 1 with g_p 2 still guides the pose
    assert not Sampler(dit, sched, guidance=1.0).guided(0.5)
    assert Sampler(dit, sched, guidance=1.0, pose_guidance=2.0).guided(0.5)


def test_turned_pose_guidance_pushes_only_the_images_asked_at_35_degrees_or_more():
    """Per-image pose guidance: in one batch, a frontal image is drawn as at g_p 1 and a
    face asked at |yaw| 42 as at g_p 3; a batch with no turned face skips the third part."""
    dit = x_dit()
    sched = training_scheduler(prediction_type="sample", resolution_shift=1.75)
    frontal = np.array([[38, 52], [74, 52], [56, 72], [42, 92], [70, 92]], np.float32)
    turned = frontal.copy()
    turned[2, 0] += 18  # nose 18 px right of centre: yaw about 42 degrees
    reqs = [
        dataclasses.replace(r, landmarks=lm)
        for r, lm in zip(
            image_requests(4, rng_seed=0, job_seed=1, image_index=0),
            [frontal, turned, frontal, turned],
            strict=True,
        )
    ]
    kw = {"steps": 4, "guidance": 2.0, "batch_size": 4, "precision": "fp32"}
    mixed = Sampler(dit, sched, pose_guidance=1.0, turned_pose_guidance=3.0, **kw)
    at1, at3 = Sampler(dit, sched, **kw), Sampler(dit, sched, pose_guidance=3.0, **kw)
    sizes = []
    orig = dit.forward
    dit.forward = lambda x, t, w, h: (sizes.append(len(x)), orig(x, t, w, h))[1]
    mixed.forward = at1.forward = at3.forward = dit.forward
    got = np.concatenate([imgs for _, imgs in mixed.stream(reqs)]).astype(int)
    assert sizes == [10] * 4  # the pose-free third part only for the two turned faces
    plain = np.concatenate([imgs for _, imgs in at1.stream(reqs)]).astype(int)
    pushed = np.concatenate([imgs for _, imgs in at3.stream(reqs)]).astype(int)
    assert np.abs(got[[0, 2]] - plain[[0, 2]]).max() <= 1  # frontal: as at g_p 1
    assert np.abs(got[[1, 3]] - pushed[[1, 3]]).max() <= 1  # turned: as at g_p 3
    assert np.abs(plain[[1, 3]] - pushed[[1, 3]]).max() > 8  # and g_p 3 does differ there
    sizes.clear()
    list(mixed.stream([reqs[0], reqs[2]]))
    assert sizes == [4] * 4  # frontal faces only: two parts, as at g_p 1
    assert mixed.forwards_per_image() == 12.0  # the most a batch can cost
    assert mixed.pose_guidances(torch.from_numpy(np.stack([frontal, turned]))).tolist() == [1, 3]


def test_the_saved_scheduler_carries_the_prediction_type_and_the_shifted_schedule(tmp_path):
    """A generator's scheduler/ folder is what tells the sampler how to read the DiT."""
    sched = training_scheduler(prediction_type="sample", resolution_shift=1.75)
    sched.save_pretrained(tmp_path / "scheduler")
    back = DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    assert back.config.prediction_type == "sample"
    torch.testing.assert_close(back.alphas_cumprod, sched.alphas_cumprod)
    assert sampling_scheduler(back).config.prediction_type == "sample"
    torch.testing.assert_close(sampling_scheduler(back).alphas_cumprod, sched.alphas_cumprod)


def test_landmark_dropout_is_drawn_apart_from_the_identity_dropout():
    dit = x_dit(sample_size=14, patch_size=7)
    cfg = TrainDiTConfig(identity_loss_weight=0.0, cond_drop_prob=0.1, pose_drop_prob=0.3)
    seen_w, seen_pose = [], []
    orig = dit.forward

    def spy(x, t, w, heat):
        seen_w.append((w.abs().sum(1) == 0).float())
        seen_pose.append((heat.abs().sum((1, 2, 3)) == 0).float())
        return orig(x, t, w, heat)

    dit.forward = spy

    loss = DiTLoss(dit, torch.nn.Identity(), training_scheduler(prediction_type="sample"), cfg)
    for _ in range(40):
        total, *_ = loss(
            torch.randn(250, 3, 14, 14), torch.ones(250, 5, 14, 14), torch.randn(250, 8)
        )
        assert torch.isfinite(total)
    w, p = torch.cat(seen_w), torch.cat(seen_pose)
    assert abs(float(p.mean()) - 0.3) < 0.02 and abs(float(w.mean()) - 0.1) < 0.015
    assert abs(float((w * p).mean()) - 0.03) < 0.01  # independent draws
    # and off by default: no landmark is ever dropped
    seen_pose.clear()
    DiTLoss(
        dit, torch.nn.Identity(), training_scheduler(), TrainDiTConfig(identity_loss_weight=0.0)
    )(torch.randn(50, 3, 14, 14), torch.ones(50, 5, 14, 14), torch.randn(50, 8))
    assert float(torch.cat(seen_pose).sum()) == 0


def test_a_112_px_dit_warm_starts_from_a_32_px_one_of_the_same_transformer(tmp_path):
    src = FaceDiT(
        sample_size=16, patch_size=2, hidden_size=32, depth=2, num_heads=2, identity_dim=8
    )
    for p in src.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    src.save_pretrained(tmp_path / "g" / "dit")
    dst = x_dit(sample_size=56, patch_size=7, bottleneck=8, seed=1)  # 8 x 8 tokens, like src
    fresh = warm_start(dst, tmp_path / "g")
    assert set(fresh) == {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "patch_proj.weight",
        "patch_proj.bias",
        "proj_out.weight",
        "proj_out.bias",
    }
    s, d = src.state_dict(), dst.state_dict()
    for k in s:
        if k not in fresh:
            assert torch.equal(s[k], d[k]), k
    posed = x_dit(sample_size=56, pose_embedding=True, randomize=False)
    fresh = warm_start(posed, tmp_path / "g")
    assert {k for k in fresh if k.startswith("pose_embed.")} == {
        "pose_embed.0.weight",
        "pose_embed.0.bias",
        "pose_embed.2.weight",
        "pose_embed.2.bias",
    }
    wider = FaceDiT(
        sample_size=16, patch_size=2, hidden_size=64, depth=2, num_heads=2, identity_dim=8
    )
    with pytest.raises(Exception, match="different DiT \\(hidden_size\\)"):
        warm_start(wider, tmp_path / "g")


def test_pose_guidance_needs_a_model_trained_with_landmark_dropout():
    order = DatasetSpec(identities=1, images_per_identity=1, pose_guidance=2.0)
    with pytest.raises(PoseGuidanceUnsupported, match="pose_guidance"):
        resolve_spec(order, FILTERS)
    got = resolve_spec(order, {**FILTERS, "pose_drop_prob": 0.1})
    assert got.pose_guidance == 2.0
    # a card's default applies when the order gives none; 1 needs no dropout
    card = {**FILTERS, "pose_drop_prob": 0.1, "sampler_defaults": {"pose_guidance": 1.5}}
    assert resolve_spec(DatasetSpec(identities=1, images_per_identity=1), card).pose_guidance == 1.5
    plain = resolve_spec(DatasetSpec(identities=1, images_per_identity=1), FILTERS)
    assert plain.pose_guidance == 1.0 and plain.turned_pose_guidance is None
    turned = DatasetSpec(identities=1, images_per_identity=1, turned_pose_guidance=3.0)
    with pytest.raises(PoseGuidanceUnsupported, match="turned_pose_guidance"):
        resolve_spec(turned, FILTERS)
    card = {**FILTERS, "pose_drop_prob": 0.1, "sampler_defaults": {"turned_pose_guidance": 3.0}}
    got = resolve_spec(DatasetSpec(identities=1, images_per_identity=1), card)
    assert (got.pose_guidance, got.turned_pose_guidance) == (1.0, 3.0)


def test_turned_bins_are_held_to_the_thresholds_calibrated_at_their_own_pose_guidance():
    groups = {"frontal": 0.50, "15_35": 0.48, "35_60": 0.44, "60+": 0.40}
    tables = {
        w: {g: {"tau_consistency": t + shift, "guidance": 1.5} for g, t in groups.items()}
        for w, shift in (("1", 0.0), ("3", 0.02))
    }
    card = {
        "pose_drop_prob": 0.1,
        "filters": {"tau_consistency": 0.5, "tau_leak": 0.6, "tau_consistency_by_pose": tables},
    }
    order = {"identities": 1, "images_per_identity": 1, "guidance": 1.5}
    plain = resolve_spec(DatasetSpec(**order), card).tau_consistency_by_pose
    both = resolve_spec(DatasetSpec(**order, turned_pose_guidance=3.0), card)
    assert plain["left_35_60"] == 0.44 and plain["frontal"] == 0.5
    by_bin = both.tau_consistency_by_pose
    assert by_bin["left_35_60"] == by_bin["right_35_60"] == 0.46 and by_bin["right_60+"] == 0.42
    assert by_bin["frontal"] == 0.5 and by_bin["left_15_35"] == 0.48  # these stay at g_p 1
    everywhere = resolve_spec(DatasetSpec(**order, pose_guidance=3.0), card)
    assert everywhere.tau_consistency_by_pose["frontal"] == 0.52


def test_the_pose_embedding_reads_the_points_back_and_adds_nothing_when_pose_is_dropped(tmp_path):
    from vigface.generator.landmarks import render_heatmaps

    m = x_dit(sample_size=56, pose_embedding=True, randomize=False)
    points = torch.tensor(
        [
            [[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]],
            [[30.0, 50.0], [60.0, 52.0], [35.0, 70.0], [32.0, 90.0], [55.0, 91.0]],
        ]
    )
    heat = render_heatmaps(points, 56)
    seen = {}
    m.pose_embed[0].register_forward_hook(lambda mod, inp, out: seen.update(coords=inp[0]))
    x, t, w = torch.randn(2, 3, 56, 56), torch.tensor([10, 500]), torch.randn(2, 8)
    # zero-initialised: a model warm-started without it draws exactly as before
    plain = x_dit(sample_size=56, randomize=False)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if "pose_embed" not in k})
    with torch.no_grad():
        assert torch.allclose(m(x, t, w, heat), plain(x, t, w, heat))
    # the coordinates it reads are the points, in [-1, 1] of the crop
    expected = (points / 112 * 2 - 1).flatten(1)
    assert torch.allclose(seen["coords"], expected, atol=0.01)
    # trained (non-zero) weights: pose changes the condition, dropped heatmaps add nothing
    for p in m.pose_embed.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    with torch.no_grad():
        assert (m.pose_condition(heat)[0] - m.pose_condition(heat)[1]).abs().max() > 1e-3
        assert torch.equal(m.pose_condition(torch.zeros_like(heat)), torch.zeros(2, 32))
    m.save_pretrained(tmp_path / "dit")
    again = FaceDiT.from_pretrained(tmp_path / "dit")
    assert again.config.pose_embedding and torch.equal(
        again.pose_embed[0].weight, m.pose_embed[0].weight
    )


@pytest.mark.parametrize("pose_embedding", [False, True])
def test_the_pose_part_computed_once_is_the_one_convolution_patch_embedding(pose_embedding):
    """encode_pose + the image slice must be the patch embedding of the concatenation it
    replaces, and the sampler must encode each batch's landmarks once, not at every step."""
    from vigface.generator.dit import PoseCondition
    from vigface.generator.landmarks import render_heatmaps

    m = x_dit(sample_size=28, pose_embedding=pose_embedding)
    points = torch.tensor([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    heat = render_heatmaps(torch.stack([points, points + 6.0, points - 4.0]), 28)
    heat[2] = 0  # a dropped (pose-free) row
    x, t, w = torch.randn(3, 3, 28, 28), torch.tensor([10, 500, 900]), torch.randn(3, 8)
    with torch.no_grad():
        # the path before the split: one convolution over image and heatmaps together
        tokens = m.patch_proj(m.patch_embed(torch.cat([x, heat], 1)))
        pose = m.encode_pose(heat)
        split = m.patch_proj(
            torch.nn.functional.conv2d(x, m.patch_embed.proj.weight[:, :3], stride=7)
            .flatten(2)
            .transpose(1, 2)
            + pose.tokens
        )
        assert torch.allclose(split, tokens, atol=1e-5)
        assert (pose.embedding is not None) == pose_embedding
        if pose_embedding:
            assert torch.allclose(pose.embedding, m.pose_condition(heat))
            assert torch.equal(pose.embedding[2], torch.zeros(32))
        # forward takes heatmaps or their encoding, with the same result
        assert torch.equal(m(x, t, w, heat), m(x, t, w, pose))
        head = pose.head(2)
        assert isinstance(head, PoseCondition) and head.tokens.shape[0] == 2
        assert torch.equal(m(x[:2], t[:2], w[:2], heat[:2]), m(x[:2], t[:2], w[:2], head))
        # the pose really reaches the output
        assert (m(x, t, w, heat) - m(x, t, w, torch.zeros_like(heat))).abs().max() > 1e-4

    calls = []
    encode = m.encode_pose
    m.encode_pose = lambda h: calls.append(h.shape[0]) or encode(h)
    sched = training_scheduler(prediction_type="sample")
    Sampler(m, sched, steps=5, guidance=2.0, pose_guidance=2.0, precision="fp32").sample(
        torch.randn(2, 8), torch.stack([points, points]), [1, 2]
    )
    assert calls == [6]  # one encoding of the three guided parts, for all five steps
