"""Guidance on a limited interval, UniPC, and sampler defaults taken from the model card."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from vigface.dataset.spec import DatasetOrder, DatasetSpec, ResolvedSpec, resolve_spec
from vigface.generator.diffusion import cfg_combine, sampling_scheduler, training_scheduler
from vigface.generator.dit import FaceDiT
from vigface.generator.landmarks import render_heatmaps
from vigface.sampling import Sampler, SamplerSettings, image_seed, initial_noise, to_uint8


def tiny_dit():
    """Random weights everywhere (adaLN-zero init would make the identity a no-op)."""
    torch.manual_seed(0)
    dit = FaceDiT(
        sample_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2, identity_dim=8
    ).eval()
    with torch.no_grad():
        for name, p in dit.named_parameters():
            p.normal_(0, 1.0 if name.startswith("identity_embed") else 0.03)
    return dit


def _inputs(n=3):
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32))
    lms = torch.from_numpy(rng.uniform(30, 80, (n, 5, 2)).astype(np.float32))
    return w, lms, [image_seed(0, i, 0) for i in range(n)]


def close(a, b) -> bool:
    """Same images up to float rounding (a level, rarely)."""
    d = np.abs(a.astype(int) - b.astype(int))
    return d.max() <= 1 and d.mean() < 0.01


def test_interval_guidance_guides_only_inside_and_runs_the_conditional_branch_outside():
    """Reference loop written out: CFG for t/T in [0.3, 0.7], the conditional v elsewhere."""
    dit, sched = tiny_dit(), training_scheduler()
    w, lms, seeds = _inputs()
    got = Sampler(
        dit, sched, steps=6, guidance=3.0, guidance_interval=(0.3, 0.7), precision="fp32"
    ).sample(w, lms, seeds)
    calls = {"guided": 0, "plain": 0}
    s = sampling_scheduler(sched, timestep_spacing="trailing")  # the sampler's default
    s.set_timesteps(6)
    x = torch.stack([initial_noise(sd, 16) for sd in seeds]) * s.init_noise_sigma
    wn = torch.nn.functional.normalize(w, dim=1)
    heat = render_heatmaps(lms, 16)
    with torch.no_grad():
        for t in s.timesteps:
            if 0.3 <= float(t) / 1000 <= 0.7:  # both branches, as one batch of 2B
                xx, ww = torch.cat([x, x]), torch.cat([wn, torch.zeros_like(wn)])
                vv = dit(s.scale_model_input(xx, t), t.expand(6), ww, torch.cat([heat, heat]))
                v, calls["guided"] = cfg_combine(vv[:3], vv[3:], 3.0), calls["guided"] + 1
            else:
                v = dit(s.scale_model_input(x, t), t.expand(3), wn, heat)
                calls["plain"] += 1
            x = s.step(v, t, x).prev_sample
    assert calls["guided"] and calls["plain"]  # both kinds of step happen on this grid
    assert close(to_uint8(x), got)
    sampler = Sampler(dit, sched, steps=6, guidance=3.0, guidance_interval=(0.3, 0.7))
    assert sampler.forwards_per_image() == 2 * calls["guided"] + calls["plain"]
    assert Sampler(dit, sched, steps=6, guidance=3.0).forwards_per_image() == 12
    assert Sampler(dit, sched, steps=6, guidance=1.0).forwards_per_image() == 6


def test_the_full_interval_is_plain_cfg_and_an_empty_one_is_the_conditional_model():
    dit, sched = tiny_dit(), training_scheduler()
    w, lms, seeds = _inputs()
    plain = Sampler(dit, sched, steps=4, guidance=3.0).sample(w, lms, seeds)
    full = Sampler(dit, sched, steps=4, guidance=3.0, guidance_interval=(0, 1)).sample(
        w, lms, seeds
    )
    assert np.array_equal(plain, full)
    never = Sampler(dit, sched, steps=4, guidance=3.0, guidance_interval=(0, 0)).sample(
        w, lms, seeds
    )
    g1 = Sampler(dit, sched, steps=4, guidance=1.0).sample(w, lms, seeds)
    assert close(never, g1)
    assert np.abs(never.astype(int) - plain.astype(int)).mean() > 1  # guidance did something


def test_unipc_and_bad_intervals():
    dit, sched = tiny_dit(), training_scheduler()
    w, lms, seeds = _inputs(2)
    img = Sampler(dit, sched, "unipc", steps=5, guidance=2.0).sample(w, lms, seeds)
    assert img.shape == (2, 16, 16, 3) and img.dtype == np.uint8
    with pytest.raises(ValueError, match="guidance_interval"):
        Sampler(dit, sched, guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="guidance_interval"):
        DatasetOrder(identities=1, images_per_identity=1, guidance_interval=(0.5, 1.5))


FILTERS = {"filters": {"tau_consistency": 0.5, "tau_leak": 0.6}}


def test_orders_take_the_model_cards_sampler_defaults_and_record_them():
    order = DatasetSpec(identities=1, images_per_identity=1)
    assert order.guidance is None and order.steps is None
    paper = resolve_spec(order, FILTERS)
    assert paper == resolve_spec(order, {**FILTERS, "sampler_defaults": {}})
    assert (paper.steps, paper.scheduler) == (25, "dpmsolver")
    assert paper.guidance == SamplerSettings().guidance  # the paper's, from its one place
    assert paper.guidance_interval == (0.0, 1.0)  # stored explicitly: every step
    assert (paper.tau_consistency, paper.tau_leak) == (0.5, 0.6)
    card = {
        **FILTERS,
        "sampler_defaults": {
            "guidance": 2.0,
            "steps": 15,
            "scheduler": "unipc",
            "guidance_interval": [0.1, 0.7],
        },
    }
    got = resolve_spec(order, card)
    assert isinstance(got, ResolvedSpec)
    assert (got.guidance, got.steps, got.scheduler) == (2.0, 15, "unipc")
    assert got.guidance_interval == (0.1, 0.7)
    mine = DatasetSpec(identities=1, images_per_identity=1, guidance=3.5, steps=9)
    kept = resolve_spec(mine, card)
    assert (kept.guidance, kept.steps, kept.scheduler) == (3.5, 9, "unipc")
    assert resolve_spec(kept, {}) == kept  # a recorded order never changes again
    assert ResolvedSpec.model_validate(kept.model_dump()) == kept  # as a job stores it
    assert SamplerSettings.for_model(card).guidance == 2.0
    with pytest.raises(ValueError, match="tau_consistency: the model card has no filter"):
        resolve_spec(order, {})


def test_negative_guidance_replaces_the_null_condition_and_nothing_else():
    """NegFaceDiff: the guided forward's second part is conditioned on a negative identity.
    Zero negatives are the paper's CFG; the drawn identity itself as its own negative leaves
    the conditional branch alone (v_c - v_neg = 0); another identity changes the faces."""
    dit = tiny_dit()
    s = Sampler(dit, training_scheduler(), steps=4, guidance=3.0, precision="fp32")
    w, lms, seeds = _inputs()
    plain = s.sample(w, lms, seeds)
    assert close(s.sample(w, lms, seeds, negatives=torch.zeros_like(w)), plain)
    conditional = Sampler(dit, training_scheduler(), steps=4, guidance=1.0, precision="fp32")
    assert close(s.sample(w, lms, seeds, negatives=w), conditional.sample(w, lms, seeds))
    away = s.sample(w, lms, seeds, negatives=w.roll(1, 0))
    assert np.abs(away.astype(int) - plain.astype(int)).mean() > 1


def test_negative_neighbours_is_a_sampler_setting_the_order_and_card_share():
    assert SamplerSettings().negative_neighbours == 0  # the paper's sampler
    order = DatasetOrder(identities=1, images_per_identity=1, negative_neighbours=4)
    spec = resolve_spec(DatasetSpec(**order.model_dump(exclude_none=True)),
                        {"filters": {"tau_leak": 1.0, "tau_consistency": -1.0}})  # fmt: skip
    assert spec.negative_neighbours == 4
    card = {"sampler_defaults": {"negative_neighbours": 2},
            "filters": {"tau_leak": 1.0, "tau_consistency": -1.0}}  # fmt: skip
    assert (
        resolve_spec(DatasetSpec(identities=1, images_per_identity=1), card).negative_neighbours
        == 2
    )
    with pytest.raises(ValueError):
        DatasetOrder(identities=1, images_per_identity=1, negative_neighbours=-1)


def test_trailing_steps_start_from_pure_noise_and_leading_does_not(tmp_path):
    """leading (the saved schedulers' spacing) starts a 10-step solver at t = 900 of 1,000
    (15 % signal on the cosine schedule): the first step reads pure noise as a face's mean
    colour. Without a spacing the solver keeps the saved training scheduler's."""
    training_scheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(tmp_path)
    sched = DDPMScheduler.from_pretrained(tmp_path)  # as a store entry's scheduler/ loads
    for name in ("dpmsolver", "unipc", "ddim"):
        trailing = sampling_scheduler(sched, name, "trailing")
        trailing.set_timesteps(10)
        assert int(trailing.timesteps[0]) == 999, name
    for spacing in ("leading", None):
        leading = sampling_scheduler(sched, "dpmsolver", spacing)
        leading.set_timesteps(10)
        assert int(leading.timesteps[0]) == 900
    dit = tiny_dit()
    w, lms, seeds = _inputs(2)
    a = Sampler(dit, sched, steps=4, guidance=2.0, precision="fp32").sample(w, lms, seeds)
    b = Sampler(dit, sched, steps=4, guidance=2.0, precision="fp32",
                timestep_spacing="leading").sample(w, lms, seeds)  # fmt: skip
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1
    with pytest.raises(ValueError, match="timestep_spacing"):
        Sampler(dit, sched, timestep_spacing="last")
    with pytest.raises(ValueError, match="timestep_spacing"):
        DatasetOrder(identities=1, images_per_identity=1, timestep_spacing="last")


def test_timestep_spacing_new_orders_trailing_stored_jobs_as_they_were_drawn():
    """A job stored before the setting existed resumes with the spacing its first shards were
    drawn with (leading); a new order takes the card's, else trailing."""
    assert SamplerSettings().timestep_spacing == "trailing"
    order = DatasetSpec(identities=1, images_per_identity=1)
    assert resolve_spec(order, FILTERS).timestep_spacing == "trailing"
    card = {**FILTERS, "sampler_defaults": {"timestep_spacing": "leading"}}
    assert resolve_spec(order, card).timestep_spacing == "leading"
    mine = DatasetSpec(identities=1, images_per_identity=1, timestep_spacing="trailing")
    assert resolve_spec(mine, card).timestep_spacing == "trailing"
    stored = resolve_spec(order, FILTERS).model_dump()
    del stored["timestep_spacing"]  # as a job admitted before the setting was stored
    assert ResolvedSpec.model_validate(stored).timestep_spacing == "leading"
