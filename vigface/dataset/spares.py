"""How many spare prototypes an order needs, from the drop rate its model was measured at.

An identity is dropped when one of its images fails the filters ``max_attempts`` times or
its mean embedding leaks; its slot then takes the next spare (``pipeline.py``), and a run
whose spares are gone stops. A fixed fraction of spares fails small orders often: with one
identity in eight dropped, a 5-identity shard with 1 spare runs out in 17 % of runs.

The model card's ``filters.drop_rate`` (``vigface calibrate-drops``, from a real run's report)
gives the share of drawn identities that were dropped at its images per identity. Assuming
each image fails independently, that is a per-image failure rate ``f`` and an order with
``m`` images per identity drops each identity with ``q = 1 - (1 - f)^m``. The spares a block
of ``n`` identities needs are then the failures before ``n`` successes, a negative binomial;
the count reserved is its ``confidence`` quantile. Spares a shard did not use go back to the
ledger when it succeeds (``jobstore.ledger.release_unused_spares``), so reserving for the bad
case keeps nothing from later orders.
"""

from __future__ import annotations

import math


def per_image_failure(dropped: int, drawn: int, images_per_identity: int) -> float:
    """The per-image failure rate behind ``dropped`` of ``drawn`` identities at
    ``images_per_identity`` images each (identities drawn = slots + replacements)."""
    if drawn <= 0 or not 0 <= dropped <= drawn or images_per_identity < 1:
        raise ValueError(
            f"need 0 <= dropped <= drawn, drawn > 0 and images >= 1; got {dropped}/{drawn}, "
            f"{images_per_identity} images"
        )
    return 1.0 - (1.0 - dropped / drawn) ** (1.0 / images_per_identity)


def drop_probability(per_image: float, images_per_identity: int) -> float:
    """How likely an identity of ``images_per_identity`` images is dropped."""
    return 1.0 - (1.0 - per_image) ** images_per_identity


def spares_needed(identities: int, drop_prob: float, confidence: float, cap: int) -> int:
    """The least ``s`` with P(at most ``s`` drops before ``identities`` identities pass) >=
    ``confidence``, each drawn identity dropped with ``drop_prob``; ``cap`` where even that
    many would not do (admission then says how many the order needs)."""
    if identities <= 0 or drop_prob <= 0:
        return 0
    if drop_prob >= 1:
        return cap
    log_p, log_q = math.log1p(-drop_prob), math.log(drop_prob)
    cdf = 0.0
    for k in range(cap + 1):
        log_pmf = (
            math.lgamma(identities + k) - math.lgamma(k + 1) - math.lgamma(identities)
            + identities * log_p + k * log_q
        )  # fmt: skip
        cdf += math.exp(log_pmf)
        if cdf >= confidence:
            return k
    return cap


def order_failure(card: dict, group_shares: dict[str, float] | None = None) -> float | None:
    """The per-image failure rate an order meets: the card's measured ``drop_rate``, or, where
    the card has ``drop_rate_by_pose``, each asked |yaw| group's own rate weighted by its share
    of the order (``group_shares``, :func:`vigface.pose.group_shares`): an identity's images
    are drawn across the groups, so ``1 - f = prod_g (1 - f_g) ** share_g``. A group without a
    measured rate takes the overall one, or none. None where nothing was measured."""
    filters = (card or {}).get("filters") or {}
    overall = filters.get("drop_rate")
    by_pose = filters.get("drop_rate_by_pose") or {}
    if not by_pose or not group_shares:
        return float(overall["per_image_failure"]) if overall else None
    kept, known = 1.0, False
    for group, share in group_shares.items():
        rate = by_pose.get(group) or overall
        if rate:
            kept *= (1.0 - float(rate["per_image_failure"])) ** share
            known = True
    return 1.0 - kept if known else None


def spares_for_order(
    card: dict,
    identities: int,
    images_per_identity: int,
    fraction: float,
    confidence: float,
    own_thresholds: bool = False,
    group_shares: dict[str, float] | None = None,
) -> int:
    """Spares for a block of ``identities``: ``fraction`` of them (at least one), or more where
    the card's measured drop rate (:func:`order_failure` at the order's ``group_shares``)
    says the block would run out more often than ``1 - confidence``. The rate was measured at
    the card's thresholds: an order that sets its own (``own_thresholds``) gets the
    fraction."""
    floor = max(1, math.ceil(fraction * identities))
    failure = order_failure(card, group_shares)
    if failure is None or own_thresholds:
        return floor
    q = drop_probability(failure, images_per_identity)
    return max(floor, spares_needed(identities, q, confidence, cap=20 * identities + 100))
