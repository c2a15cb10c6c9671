"""The metrics of a steering benchmark, with the field's definitions: small pure numpy functions.

Most inputs are *propensities*: per test item, ``log p(matching answer) - log p(other answer)``
(nats), measured at a grid of steering multipliers (``propensity[items, multipliers]``).

- `item_slopes`, `monotonic`, `steerability_summary`: steerability, the per-item
  least-squares slope of propensity on multiplier, and the anti-steerable fraction (Tan et
  al., 2024, "Analyzing the generalization and reliability of steering vectors",
  arXiv:2407.12404); the mean change at the largest multiplier (Braun et al., 2025,
  "Understanding (un)reliability of steering vectors in language models", arXiv:2505.22637);
  non-monotonic items are counted, not folded into a slope.
- `behaviour_rate`, `effectiveness`, `entanglement`: the share of items preferring the
  matching answer, and the normalized effectiveness and the entanglement of SteeringSafety
  (Siu et al., 2025, "SteeringSafety: A Systematic Safety Evaluation Framework of
  Representation Steering in LLMs", arXiv:2509.13450).
- `calibrated_multiplier`: the multiplier at which the p95 per-token KL reaches a budget.
- `bootstrap_interval`, `bootstrap_rows`: seeded percentile bootstrap intervals over items.
- `spread`: mean, SD, min and max, e.g. over the training examples.

Bad input raises `steerlens.errors.InputError` (data) or `steerlens.errors.SpecError` (a
setting), naming the problem and the fix; nothing is clipped or dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from steerlens.errors import InputError, SpecError, check_int

__all__ = [
    "Spread",
    "Steerability",
    "behaviour_rate",
    "bootstrap_interval",
    "bootstrap_rows",
    "calibrated_multiplier",
    "effectiveness",
    "entanglement",
    "item_slopes",
    "monotonic",
    "spread",
    "steerability_summary",
]

Floats = NDArray[np.float64]


# --------------------------------------------------------------------------- input checks


def _floats(value: ArrayLike, what: str) -> Floats:
    """``value`` as a float64 array; an `InputError` naming ``what`` when it is not numeric."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{what} must be numbers (an array or a list of floats); could not read "
            f"{type(value).__name__} ({err})."
        ) from None
    return array


def _finite(array: Floats, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = first[0] if len(first) == 1 else first
        raise InputError(
            f"{what} has {int(bad.sum())} non-finite value(s) (NaN or inf), the first at index "
            f"{where}: {array[first]}; drop or recompute those items before computing metrics."
        )


def _vector(value: ArrayLike, what: str, *, min_len: int = 1) -> Floats:
    """A finite 1-D float array of at least ``min_len`` entries."""
    array = _floats(value, what)
    if array.ndim != 1:
        raise InputError(
            f"{what} must be one-dimensional (one number per entry); got shape {array.shape}."
        )
    if array.size < min_len:
        raise InputError(f"{what} needs at least {min_len} value(s); got {array.size}.")
    _finite(array, what)
    return array


def _grid(multipliers: ArrayLike, propensity: ArrayLike) -> tuple[Floats, Floats]:
    """Checked ``multipliers[m]`` (at least 2 distinct) and ``propensity[items, m]``."""
    x = _vector(multipliers, "multipliers")
    if np.unique(x).size < 2:
        raise InputError(
            f"a slope needs at least 2 distinct multipliers; got {x.tolist()}. Measure the "
            "propensity at more than one multiplier."
        )
    y = _floats(propensity, "propensity")
    if y.ndim != 2 or y.shape[1] != x.size:
        raise InputError(
            f"propensity must be shaped [items, multipliers] = [n, {x.size}] to match the "
            f"{x.size} multipliers; got shape {y.shape}. Pass one row per item and one column "
            "per multiplier, in the multipliers' order (one item: propensity[None, :])."
        )
    if y.shape[0] == 0:
        raise InputError("propensity has no items (0 rows); pass at least one item.")
    _finite(y, "propensity")
    return x, y


def _distinct(x: Floats) -> None:
    values, counts = np.unique(x, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            f"multipliers must be distinct for a curve; {values[counts > 1].tolist()} "
            "repeat(s). Average the repeated measurements into one column per multiplier."
        )


def _rate(value: float, what: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a rate in [0, 1]; got {value!r}.") from None
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise InputError(
            f"{what} must be a rate in [0, 1]; got {value!r}. Pass a fraction, not a percentage."
        )
    return rate


def _sd(values: Floats) -> float:
    """Sample standard deviation (ddof=1); NaN for fewer than two values."""
    return float(np.std(values, ddof=1)) if values.size > 1 else math.nan


# --------------------------------------------------------------------------- steerability


def item_slopes(multipliers: ArrayLike, propensity: ArrayLike) -> Floats:
    """Per item, the ordinary least-squares slope of propensity on multiplier.

    This is the steerability of Tan et al. (2024), "Analyzing the generalization and
    reliability of steering vectors" (arXiv:2407.12404): nats of propensity per unit
    multiplier. Repeated multipliers are allowed (each column is one observation).

    Args:
        multipliers: ``[m]``: the steering multipliers, at least 2 distinct.
        propensity: ``[items, m]``: ``log p(matching) - log p(other)`` per item and multiplier.

    Returns:
        ``[items]``: the slopes (float64).

    Raises:
        InputError: fewer than 2 distinct multipliers, a shape mismatch, no items, or a
            non-finite value.

    Example:
        >>> item_slopes([-1, 0, 1], [[-2, 0, 2], [1, 0, -1]]).tolist()
        [2.0, -1.0]
    """
    x, y = _grid(multipliers, propensity)
    centred = x - x.mean()
    slopes: Floats = (y - y.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    return slopes


def monotonic(
    multipliers: ArrayLike, propensity: ArrayLike, *, atol: float = 1e-6
) -> NDArray[np.bool_]:
    """Per item, whether its propensity curve is monotonic over the sorted multipliers.

    An item is monotonic when every step between neighbouring multipliers goes the same way:
    all steps ``>= -atol`` (non-decreasing) or all steps ``<= atol`` (non-increasing); a flat
    curve is both. ``atol`` applies to each step, so noise below it never breaks monotonicity.

    Args:
        multipliers: ``[m]``: distinct multipliers (any order), at least 2.
        propensity: ``[items, m]``: propensity per item and multiplier, in that order.
        atol: the tolerance per step (nats), ``>= 0``.

    Returns:
        ``[items]``: booleans.

    Raises:
        InputError: repeated multipliers, a shape mismatch, no items, or a non-finite value.
        SpecError: a negative or non-finite ``atol``.

    Example:
        >>> monotonic([1, 0, 2], [[1, 0, 3], [1, 0, -1], [0, 0, 0]]).tolist()
        [True, False, True]
    """
    x, y = _grid(multipliers, propensity)
    _distinct(x)
    try:
        tol = float(atol)
    except (TypeError, ValueError):
        tol = math.nan
    if not (math.isfinite(tol) and tol >= 0):
        raise SpecError(f"atol must be a finite number >= 0; got {atol!r}.")
    steps = np.diff(y[:, np.argsort(x)], axis=1)
    rising = (steps >= -tol).all(axis=1)
    falling = (steps <= tol).all(axis=1)
    return np.asarray(rising | falling, dtype=np.bool_)


@dataclass(frozen=True)
class Steerability:
    """The steerability of one vector over a set of items; what `steerability_summary` returns.

    Attributes:
        n_items: the number of items.
        mean_slope: the mean per-item slope (`item_slopes`; nats per unit multiplier).
        sd_slope: the sample standard deviation (ddof=1) of the slopes; NaN for one item.
        anti_steerable_fraction: the share of items with slope < 0 (Tan et al., 2024).
        delta_at_max: the mean over items of propensity at the largest multiplier minus
            propensity at multiplier 0 (Braun et al., 2025; nats).
        non_monotonic_fraction: the share of items whose curve is not monotonic (`monotonic`).
        n_non_monotonic: the number of those items.
        mean_slope_monotonic: the mean slope over the monotonic items only; NaN if none is.
        slopes: the per-item slopes, in item order.
        monotonic: per item, whether its curve is monotonic.
    """

    n_items: int
    mean_slope: float
    sd_slope: float
    anti_steerable_fraction: float
    delta_at_max: float
    non_monotonic_fraction: float
    n_non_monotonic: int
    mean_slope_monotonic: float
    slopes: tuple[float, ...]
    monotonic: tuple[bool, ...]


def steerability_summary(
    multipliers: ArrayLike, propensity: ArrayLike, *, atol: float = 1e-6
) -> Steerability:
    """Slopes, anti-steerable fraction, Δ-at-max and monotonicity of one vector's items.

    Slopes and the anti-steerable fraction follow Tan et al. (2024), arXiv:2407.12404; the
    Δ-at-max (propensity at the largest multiplier minus at multiplier 0, averaged over items)
    follows Braun et al. (2025), "Understanding (un)reliability of steering vectors in language
    models", arXiv:2505.22637. Items whose curve is not monotonic are reported as such
    (``n_non_monotonic``) and left out of ``mean_slope_monotonic`` rather than folded into a
    slope; ``mean_slope`` covers every item.

    Args:
        multipliers: ``[m]``: distinct multipliers including 0 and at least one positive.
        propensity: ``[items, m]``: propensity per item and multiplier.
        atol: the per-step tolerance of `monotonic`.

    Raises:
        InputError: as `item_slopes` and `monotonic`, or a grid without 0 or without a
            positive multiplier.

    Example:
        >>> s = steerability_summary([0, 1, 2], [[0, 1, 2], [0, -1, -2], [0, 2, 1]])
        >>> s.slopes, s.anti_steerable_fraction, s.delta_at_max
        ((1.0, -1.0, 0.5), 0.3333333333333333, 0.3333333333333333)
        >>> s.n_non_monotonic, s.mean_slope_monotonic
        (1, 0.0)
    """
    x, y = _grid(multipliers, propensity)
    is_monotonic = monotonic(x, y, atol=atol)
    zero = np.flatnonzero(x == 0.0)
    if zero.size == 0:
        raise InputError(
            f"Δ-at-max needs multiplier 0 (the unsteered baseline) in the grid; got "
            f"{x.tolist()}. Add 0 to the multipliers."
        )
    top = int(np.argmax(x))
    if x[top] <= 0:
        raise InputError(
            f"Δ-at-max needs a positive multiplier; the largest is {x[top]}. Add a multiplier "
            "> 0 to the grid."
        )
    slopes = item_slopes(x, y)
    n_non = int((~is_monotonic).sum())
    kept = slopes[is_monotonic]
    return Steerability(
        n_items=int(slopes.size),
        mean_slope=float(slopes.mean()),
        sd_slope=_sd(slopes),
        anti_steerable_fraction=float((slopes < 0).mean()),
        delta_at_max=float((y[:, top] - y[:, zero[0]]).mean()),
        non_monotonic_fraction=n_non / slopes.size,
        n_non_monotonic=n_non,
        mean_slope_monotonic=float(kept.mean()) if kept.size else math.nan,
        slopes=tuple(float(s) for s in slopes),
        monotonic=tuple(bool(m) for m in is_monotonic),
    )


# --------------------------------------------------------------------------- SteeringSafety


def behaviour_rate(propensity: ArrayLike) -> float:
    """The share of items that prefer the matching answer (propensity > 0; a tie is not).

    Args:
        propensity: ``[items]``: ``log p(matching) - log p(other)`` per item, at one multiplier.

    Raises:
        InputError: no items, not one-dimensional, or a non-finite value.

    Example:
        >>> behaviour_rate([1.5, -0.2, 0.0, 3.0])
        0.5
    """
    y = _vector(propensity, "propensity")
    return float((y > 0).mean())


def effectiveness(y_steered: float, y_base: float) -> float:
    """SteeringSafety's normalized effectiveness: ``(y_steered - y_base) / (1 - y_base)``.

    The change in behaviour rate as a share of the headroom above the unsteered rate (Siu et
    al., 2025, "SteeringSafety", arXiv:2509.13450): 1 is the full headroom gained, 0 no change,
    and a negative value steering the wrong way (it can fall below -1 when the base rate is
    above 0.5). With ``y_base == 1`` there is no headroom and the result is NaN, reported as
    such rather than guessed.

    Args:
        y_steered: the behaviour rate under steering, in [0, 1].
        y_base: the unsteered behaviour rate, in [0, 1].

    Raises:
        InputError: a rate outside [0, 1] or not a number.

    Example:
        >>> effectiveness(0.75, 0.5)
        0.5
        >>> effectiveness(0.25, 0.5)
        -0.5
        >>> effectiveness(1.0, 1.0)
        nan
    """
    steered = _rate(y_steered, "y_steered")
    base = _rate(y_base, "y_base")
    if base == 1.0:
        return math.nan
    return (steered - base) / (1.0 - base)


def entanglement(changes: Mapping[str, float]) -> float:
    """SteeringSafety's entanglement: the RMS change on the behaviours *not* steered.

    ``sqrt(mean(delta ** 2))`` over the changes in behaviour rate (steered minus unsteered) on
    the other behaviours and on capability sets such as an MMLU subset (Siu et al., 2025,
    "SteeringSafety", arXiv:2509.13450). 0 is no side effect; changes of either sign count.
    An empty mapping gives NaN (nothing was measured).

    Args:
        changes: behaviour name -> change in its rate, each in [-1, 1].

    Raises:
        InputError: not a mapping, or a change that is not a finite number in [-1, 1].

    Example:
        >>> entanglement({"sycophancy": 0.3, "refusal": -0.4, "mmlu": 0.0})
        0.28867513459481287
        >>> entanglement({})
        nan
    """
    if not isinstance(changes, Mapping):
        raise InputError(
            f"entanglement takes a mapping behaviour -> change in rate; got "
            f"{type(changes).__name__}. Pass e.g. {{'refusal': -0.1, 'mmlu': 0.02}}."
        )
    if not changes:
        return math.nan
    deltas = _vector(list(changes.values()), "entanglement changes")
    outside = np.abs(deltas) > 1
    if outside.any():
        names = [name for name, bad in zip(changes, outside, strict=True) if bad]
        raise InputError(
            f"changes in a rate lie in [-1, 1]; {names} are outside. Pass differences of "
            "fractions, not of percentages."
        )
    return float(np.sqrt(np.mean(deltas**2)))


# --------------------------------------------------------------------------- calibration


def calibrated_multiplier(
    multipliers: ArrayLike, kl_p95: ArrayLike, budget: float = 1.0
) -> float | None:
    """The multiplier at which the p95 per-token KL first reaches ``budget``.

    Between the two grid points that bracket the first crossing (the first point with
    ``kl_p95 >= budget`` and the one before it), the KL is interpolated linearly in
    ``log(multiplier)``. When the first grid point already reaches the budget there is no
    bracketing point on a log scale, so the curve is taken as linear in the multiplier between
    (0, 0) (no steering, no KL) and that first point: ``m_0 * budget / kl_0``. When no grid
    point reaches the budget the answer is ``None``: the caller reports it, never clips to the
    grid's end.

    Args:
        multipliers: ``[k]``: positive, strictly increasing multipliers.
        kl_p95: ``[k]``: the 95th percentile of the per-token KL (nats) at each multiplier.
        budget: the KL budget (nats), > 0.

    Raises:
        InputError: an empty grid, a multiplier <= 0, a non-increasing grid, a shape mismatch
            or a non-finite value.
        SpecError: a budget that is not a finite positive number.

    Example:
        >>> calibrated_multiplier([1, 4, 16], [0.2, 0.5, 2.0], budget=1.0)
        6.3496042078727974
        >>> calibrated_multiplier([2, 4], [2.0, 3.0], budget=1.0)
        1.0
        >>> calibrated_multiplier([1, 2], [0.1, 0.2], budget=1.0) is None
        True
    """
    try:
        limit = float(budget)
    except (TypeError, ValueError):
        raise SpecError(f"budget must be a positive number (nats); got {budget!r}.") from None
    if not (math.isfinite(limit) and limit > 0):
        raise SpecError(f"budget must be a finite number > 0 (nats); got {budget!r}.")
    x = _vector(multipliers, "multipliers")
    kl = _vector(kl_p95, "kl_p95")
    if kl.size != x.size:
        raise InputError(
            f"kl_p95 needs one value per multiplier ({x.size}); got {kl.size}. Pass them in "
            "the multipliers' order."
        )
    if (x <= 0).any():
        raise InputError(
            f"calibrated_multiplier interpolates in log(multiplier), so every multiplier must "
            f"be > 0; got {x.tolist()}. Drop 0 and negative multipliers from the grid."
        )
    if (np.diff(x) <= 0).any():
        raise InputError(
            f"multipliers must be strictly increasing; got {x.tolist()}. Sort them (with their "
            "kl_p95) and drop repeats."
        )
    reached = np.flatnonzero(kl >= limit)
    if reached.size == 0:
        return None
    i = int(reached[0])
    if i == 0:
        return float(x[0] * limit / kl[0])
    t = (limit - kl[i - 1]) / (kl[i] - kl[i - 1])
    log_m = math.log(x[i - 1]) + t * (math.log(x[i]) - math.log(x[i - 1]))
    return float(math.exp(log_m))


# --------------------------------------------------------------------------- intervals


def _level(level: float) -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise SpecError(f"level must be in (0, 1), e.g. 0.95; got {level!r}.")
    return value


def bootstrap_rows(
    rows: ArrayLike,
    statistic: Callable[[Floats], Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(rows)``, resampling whole rows (items).

    Each of ``n_boot`` resamples draws ``len(rows)`` rows with replacement (axis 0), so the
    columns of a row stay paired: stack several arrays measured on the same items (e.g.
    ``propensity[items, multipliers]``, or steered and unsteered propensity side by side) and
    compute the metric from the resampled block. The interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the replicates. Seeded: the same input and ``seed`` give
    the same interval. A statistic that is NaN on some resample makes the interval NaN (it is
    not dropped).

    Args:
        rows: ``[items, ...]``: finite values, one row per item.
        statistic: maps an array shaped like ``rows`` to one number.
        n_boot: the number of resamples, >= 1.
        seed: the seed of ``numpy.random.default_rng``.
        level: the coverage, in (0, 1).

    Returns:
        ``(low, high)``.

    Raises:
        InputError: no rows or a non-finite value.
        SpecError: a bad ``n_boot``, ``seed`` or ``level``, or a statistic that does not return
            one number.

    Example:
        >>> x = [0, 1, 2]
        >>> p = [[0, 1, 2], [0, 2, 4], [0, -1, -2], [0, 1, 1]]
        >>> low, high = bootstrap_rows(p, lambda b: item_slopes(x, b).mean(), seed=1)
        >>> bool(low <= item_slopes(x, p).mean() <= high)
        True
    """
    data = _floats(rows, "rows")
    if data.ndim == 0 or data.shape[0] == 0:
        raise InputError(
            f"bootstrap needs at least one item (rows along axis 0); got shape {data.shape}."
        )
    _finite(data, "rows")
    draws = check_int(n_boot, "n_boot")
    if draws < 1:
        raise SpecError(f"n_boot must be >= 1; got {n_boot!r}.")
    rng = np.random.default_rng(check_int(seed, "seed"))
    coverage = _level(level)
    n = data.shape[0]
    index = rng.integers(0, n, size=(draws, n))
    replicates = np.empty(draws, dtype=np.float64)
    for b in range(draws):
        value = statistic(data[index[b]])
        try:
            replicates[b] = float(value)
        except (TypeError, ValueError):
            raise SpecError(
                f"statistic must return one number; got {type(value).__name__} "
                f"{np.shape(value)}. Reduce the resampled rows to a scalar (e.g. np.mean)."
            ) from None
    alpha = (1.0 - coverage) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    values: ArrayLike,
    statistic: Callable[[Floats], Any] = np.mean,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over items: `bootstrap_rows` on a 1-D
    array (same resamples for the same ``seed``).

    Args:
        values: ``[items]``: one finite number per item (e.g. `item_slopes`, or ``y > 0``).
        statistic: maps the resampled values to one number (default: the mean).
        n_boot: the number of resamples, >= 1.
        seed: the seed of ``numpy.random.default_rng``.
        level: the coverage, in (0, 1).

    Raises:
        InputError: not one-dimensional, empty, or a non-finite value.
        SpecError: as `bootstrap_rows`.

    Example:
        >>> low, high = bootstrap_interval([0.1, 0.4, 0.2, 0.9, 0.5], seed=0)
        >>> bool(low <= 0.42 <= high), (low, high) == bootstrap_interval([0.1, 0.4, 0.2, 0.9, 0.5])
        (True, True)
    """
    data = _vector(values, "values")
    return bootstrap_rows(data, statistic, n_boot=n_boot, seed=seed, level=level)


# --------------------------------------------------------------------------- spread


@dataclass(frozen=True)
class Spread:
    """Summary of a handful of numbers, e.g. a metric over the E training examples.

    Attributes:
        n: how many values.
        mean: their mean.
        sd: their sample standard deviation (ddof=1); NaN for one value.
        min: the smallest.
        max: the largest.
    """

    n: int
    mean: float
    sd: float
    min: float
    max: float


def spread(values: ArrayLike) -> Spread:
    """The mean, sample SD (ddof=1; NaN for one value), min and max of ``values``.

    Raises:
        InputError: empty, not one-dimensional, or a non-finite value.

    Example:
        >>> spread([1.0, 2.0, 3.0])
        Spread(n=3, mean=2.0, sd=1.0, min=1.0, max=3.0)
    """
    data = _vector(values, "values")
    return Spread(
        n=int(data.size),
        mean=float(data.mean()),
        sd=_sd(data),
        min=float(data.min()),
        max=float(data.max()),
    )
