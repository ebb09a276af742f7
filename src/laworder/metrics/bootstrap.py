"""Hierarchical bootstrap for differences between training recipes, and the decision rule.

Scores come as one array per arm, ``S × M``: S training seeds (independent models) by M
conditioning masks (the same masks for every arm, already averaged over sampling seeds). The
difference of two arms' means is resampled on both levels: each replicate draws M masks with
replacement (one draw shared by both arms: they are scored on the same masks) and, for each
arm on its own, S training seeds with replacement. The percentile interval of the replicates
is the CI. With one training seed per arm it reduces to a bootstrap over masks, which only
describes sampling noise: say so when reporting it. With ``strata`` (say, the test subsets of a
segmentation benchmark) masks are drawn within each stratum and the score is the mean of the
stratum means, so every stratum weighs the same as in a "mean over subsets" table column.

The decision rule (``bench/synth_fair.py`` writes it down before any run):
    * ``wins``    the CI of (arm − comparator) lies above 0;
    * ``loses``   the CI lies below 0;
    * ``refuted`` the CI's upper end is below ``margin`` (+0.03 Dice): the paper's gain is not
      there at this scale (it may still be above 0: a small real gain);
    * otherwise ``inconclusive``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from laworder.errors import DataError


@dataclass(frozen=True)
class BootstrapCI:
    """Mean difference, its percentile CI and the number of replicates / seeds / masks."""

    difference: float
    low: float
    high: float
    level: float
    replicates: int
    seeds: tuple[int, int]
    masks: int

    def as_dict(self) -> dict:
        return asdict(self)


def _scores(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(f"{name} scores must be a non-empty seeds × masks array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} scores hold non-finite values")
    return array


def _column_weights(rng: np.random.Generator, groups: list[np.ndarray], masks: int, count: int) -> np.ndarray:
    """``count × M`` resampling weights: multinomial draws within each group, each group weighing 1/G."""
    weights = np.zeros((count, masks))
    for columns in groups:
        n = len(columns)
        weights[:, columns] = rng.multinomial(n, np.full(n, 1.0 / n), size=count) / (n * len(groups))
    return weights


def hierarchical_bootstrap_difference(arm, comparator, replicates: int = 10000, level: float = 0.95,
                                      seed: int = 0, strata=None) -> BootstrapCI:
    """CI of mean(arm) − mean(comparator), resampling training seeds (per arm) and masks (shared).

    Args:
        arm, comparator: ``S_a × M`` and ``S_c × M`` scores (rows: training seeds; columns: the
            same masks in the same order).
        replicates: bootstrap replicates. level: CI coverage (0.95). seed: resampling seed.
        strata: optional length-M labels (e.g. the test subset of each image): masks are resampled
            within each label and the mean is the unweighted mean of the per-label means.

    Raises:
        DataError: not 2-D, mask counts differ, non-finite scores, strata of the wrong length.
        ValueError: bad level/replicates.
    """
    arm, comparator = _scores("arm", arm), _scores("comparator", comparator)
    if arm.shape[1] != comparator.shape[1]:
        raise DataError(f"arms are scored on different mask counts: {arm.shape[1]} vs {comparator.shape[1]}")
    if not 0.0 < level < 1.0 or replicates < 100:
        raise ValueError(f"need 0 < level < 1 and replicates >= 100, got {level}, {replicates}")
    rng = np.random.default_rng(seed)
    masks = arm.shape[1]
    groups = None
    if strata is not None:
        labels = np.asarray(list(strata))
        if labels.shape != (masks,):
            raise DataError(f"strata must label each of the {masks} masks, got {labels.shape[0]} labels")
        groups = [np.flatnonzero(labels == label) for label in dict.fromkeys(labels.tolist())]
    differences = np.empty(replicates)
    for start in range(0, replicates, 1000):  # blocks keep the weight matrices small
        count = min(1000, replicates - start)
        # multinomial counts = how often each mask / seed is drawn in a replicate
        if groups is None:
            mask_weights = rng.multinomial(masks, np.full(masks, 1.0 / masks), size=count) / masks
        else:
            mask_weights = _column_weights(rng, groups, masks, count)
        arm_weights = rng.multinomial(arm.shape[0], np.full(arm.shape[0], 1.0 / arm.shape[0]), size=count) / arm.shape[0]
        comp_weights = (rng.multinomial(comparator.shape[0], np.full(comparator.shape[0], 1.0 / comparator.shape[0]),
                                        size=count) / comparator.shape[0])
        arm_means = np.einsum("bs,sm,bm->b", arm_weights, arm, mask_weights)
        comp_means = np.einsum("bs,sm,bm->b", comp_weights, comparator, mask_weights)
        differences[start : start + count] = arm_means - comp_means
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    if groups is None:
        observed = arm.mean() - comparator.mean()
    else:
        observed = np.mean([arm[:, c].mean() - comparator[:, c].mean() for c in groups])
    return BootstrapCI(float(observed), float(low), float(high), level, replicates,
                       (arm.shape[0], comparator.shape[0]), masks)


def decide(ci: BootstrapCI, margin: float = 0.03) -> dict:
    """Apply the decision rule (module docstring) to a CI of arm − comparator."""
    wins, loses, refuted = ci.low > 0.0, ci.high < 0.0, ci.high < margin
    if wins:
        verdict = "wins (small: below the margin)" if refuted else "wins"
    elif loses:
        verdict = "loses"
    elif refuted:
        verdict = "refuted (no gain of +margin)"
    else:
        verdict = "inconclusive"
    return {"wins": bool(wins), "loses": bool(loses), "refuted": bool(refuted), "margin": margin, "verdict": verdict}


def headroom(dice: float, chance: float, ceiling: float) -> float:
    """Share of the judge's headroom a pool recovers: (Dice − chance) / (ceiling − chance).

    Raises:
        ValueError: ``ceiling`` not above ``chance`` (the judge cannot tell masks apart).
    """
    if not ceiling > chance:
        raise ValueError(f"the ceiling ({ceiling:.3f}) must exceed the chance level ({chance:.3f})")
    return (dice - chance) / (ceiling - chance)
