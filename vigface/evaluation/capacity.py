"""Reading a model's identity capacity off the outside judge's distinctness curve.

Real people's mean distance to the nearest other identity centre falls with the population
size N roughly as ``a + b ln N`` (more people, nearer neighbours). A model's delivered
identities, measured the same way at the same image count, are "as distinct as real people"
at N when their figure is at least the real fit there, less a tolerance for noise. The
capacity is the largest measured N up to which every measured population passes: the first
failure caps it, even if a larger population happens to pass again.

The tolerance is what two measurements of the same thing differ by: twice the combined
spread of the real fit's residuals and of the delivered figure over random populations.
Without it, a delivered curve sitting on the real one fails or passes by coin toss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LogFit:
    """``between(N) = a + b ln N`` fitted to real people, with its residual RMS."""

    a: float
    b: float
    residual_rms: float

    def __call__(self, n: float) -> float:
        return float(self.a + self.b * np.log(n))


def fit_log_curve(points: dict[int, float]) -> LogFit:
    """Least-squares ``a + b ln N`` through ``{N: figure}`` (at least two populations)."""
    if len(points) < 2:
        raise ValueError("the real curve needs at least two population sizes to fit")
    ns = np.array(sorted(points), dtype=float)
    ys = np.array([points[int(n)] for n in ns])
    b, a = np.polyfit(np.log(ns), ys, 1)
    resid = ys - (a + b * np.log(ns))
    # with two points the fit is exact; its residual says nothing about noise
    rms = float(np.sqrt(np.sum(resid**2) / max(len(ns) - 2, 1))) if len(ns) > 2 else 0.0
    return LogFit(float(a), float(b), rms)


@dataclass
class CapacityReading:
    capacity: int
    measured_up_to: int
    bounded: bool  # True when a measured population failed (capacity < measured_up_to)
    rows: list[dict] = field(default_factory=list)


def read_capacity(
    delivered: dict[int, float],
    delivered_spread: dict[int, float],
    fit: LogFit,
    sigmas: float = 2.0,
) -> CapacityReading:
    """The capacity under the rule in the module docstring.

    ``delivered`` maps N to the delivered identities' mean nearest-other-centre distance and
    ``delivered_spread`` to its standard deviation over random populations (0 where there was
    one). Each row of the result says N, the fit, the tolerance, the margin and the verdict.
    """
    if not delivered:
        raise ValueError("no delivered population was measured")
    rows, capacity, failed = [], 0, False
    for n in sorted(delivered):
        tol = sigmas * float(np.hypot(fit.residual_rms, delivered_spread.get(n, 0.0)))
        margin = delivered[n] - fit(n)
        ok = margin >= -tol
        if not ok:
            failed = True
        elif not failed:
            capacity = n
        rows.append({"identities": n, "delivered": round(delivered[n], 4),
                     "real_fit": round(fit(n), 4), "tolerance": round(tol, 4),
                     "margin": round(margin, 4), "as_distinct": bool(ok)})  # fmt: skip
    return CapacityReading(capacity, max(delivered), failed, rows)


FIGURE = "measurements/judge_capacity.png"


def record_judge_capacity(entry, summary: dict, curve: dict, figure=None) -> dict:
    """Write the judge's capacity into a generator entry: ``summary`` (the fields of
    :class:`vigface.model_card.JudgeCapacity` but ``figure``) into the card's ``capacity``,
    the whole ``curve`` to ``measurements/judge_capacity.json`` and the PNG at ``figure`` beside
    it. The card is validated before anything is written, so a bad summary leaves the entry as
    it was. Returns the card."""
    import os
    import shutil
    from pathlib import Path

    from vigface.model_card import load_card, update_card, validate_card, write_measurement

    entry = Path(entry)
    card = load_card(entry)
    if not card:
        raise ValueError(f"{entry}: no model card to record the capacity in")
    capacity = dict(card.get("capacity") or {"virtual_identities": card.get("num_virtual") or 0})
    capacity["judge"] = {**summary, "figure": FIGURE if figure else None}
    validate_card({**card, "capacity": capacity}, entry / "model_card.json")
    if figure:
        target = entry / FIGURE
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(figure, tmp)
        os.replace(tmp, target)
    write_measurement(entry, "judge_capacity", curve)
    return update_card(entry, capacity=capacity)
