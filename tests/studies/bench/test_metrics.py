"""Each benchmark metric pinned against a direct computation on hand-made arrays."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from steerlens.errors import InputError, SpecError
from steerlens.studies.bench.metrics import (
    Spread,
    Steerability,
    behaviour_rate,
    bootstrap_interval,
    bootstrap_rows,
    calibrated_multiplier,
    effectiveness,
    entanglement,
    item_slopes,
    monotonic,
    spread,
    steerability_summary,
)

MULTIPLIERS = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])


def _random_propensity(items: int = 7, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(items, MULTIPLIERS.size))


def _exact_slopes(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Each row's least-squares slope in exact rational arithmetic (of the float inputs), and
    how far a float64 ``sum c (y - mean y) / sum c^2`` (c = x - mean x) may be from it: the
    means, the m differences, the m products and their sum, the m squares and their sum, the
    quotient each round, within ``2 (m + 4) u sum |c| |y - mean y| / sum c^2``."""
    xs = [Fraction(v) for v in np.asarray(x, dtype=float)]
    m = len(xs)
    c = [v - sum(xs) / m for v in xs]
    var = sum(v * v for v in c)
    slopes, bounds = [], []
    for row in np.asarray(y, dtype=float):
        ys = [Fraction(v) for v in row]
        dev = [v - sum(ys) / m for v in ys]
        slopes.append(float(sum(a * b for a, b in zip(c, dev, strict=True)) / var))
        scale = sum(abs(a) * abs(b) for a, b in zip(c, dev, strict=True)) / var
        bounds.append(2 * (m + 4) * 2.0**-53 * float(scale))
    return np.array(slopes), np.array(bounds)


# ---------------------------------------------------------------- item_slopes


def test_slopes_match_the_exact_least_squares_slope():
    y = _random_propensity()
    expected, bounds = _exact_slopes(MULTIPLIERS, y)
    assert np.all(np.abs(item_slopes(MULTIPLIERS, y) - expected) <= bounds)


def test_slopes_with_unsorted_and_repeated_multipliers_match_the_exact_slope():
    x = np.array([1.0, 0.0, 1.0, 3.0])
    y = np.array([[2.0, 0.5, 2.2, 5.0], [0.0, 1.0, -0.5, -3.0]])
    expected, bounds = _exact_slopes(x, y)
    assert np.all(np.abs(item_slopes(x, y) - expected) <= bounds)


def test_slope_of_an_exact_line_is_its_gradient():
    y = np.array([3.0 * MULTIPLIERS + 1.0, -0.5 * MULTIPLIERS])
    # Small integers and halves: every step of the formula is exact in float64.
    assert item_slopes(MULTIPLIERS.tolist(), y.tolist()).tolist() == [3.0, -0.5]


@pytest.mark.parametrize(
    ("multipliers", "propensity", "match"),
    [
        ([1.0, 1.0, 1.0], [[0.0, 1.0, 2.0]], "2 distinct"),
        ([1.0], [[0.0]], "2 distinct"),
        ([0.0, 1.0, 2.0], [[0.0, 1.0]], r"shape \(1, 2\)"),
        ([0.0, 1.0], [0.0, 1.0], "one item: propensity\\[None, :\\]"),
        ([0.0, 1.0], np.zeros((0, 2)), "no items"),
        ([0.0, 1.0], [[0.0, np.nan]], "non-finite"),
        ([0.0, np.inf], [[0.0, 1.0]], "non-finite"),
        ([[0.0, 1.0]], [[0.0, 1.0]], "one-dimensional"),
        ([0.0, 1.0], [["a", "b"]], "must be numbers"),
    ],
)
def test_slopes_refuse_bad_input(multipliers, propensity, match):
    with pytest.raises(InputError, match=match):
        item_slopes(multipliers, propensity)


# ---------------------------------------------------------------- monotonic


def test_monotonic_sorts_by_multiplier_and_accepts_flat_and_both_directions():
    x = [2.0, 0.0, 1.0]  # sorted order: 0, 1, 2
    y = [
        [3.0, 0.0, 1.0],  # 0 -> 1 -> 3: increasing
        [-3.0, 0.0, -1.0],  # decreasing
        [5.0, 5.0, 5.0],  # flat
        [0.0, 0.0, 1.0],  # 0 -> 1 -> 0: up then down
    ]
    assert monotonic(x, y).tolist() == [True, True, True, False]


def test_monotonic_tolerance_is_per_step():
    x = [0.0, 1.0, 2.0, 3.0]
    wiggle = [[0.0, 1.0, 1.0 - 1e-8, 2.0]]
    assert monotonic(x, wiggle).tolist() == [True]
    assert monotonic(x, wiggle, atol=0.0).tolist() == [False]
    dip = [[0.0, 1.0, 0.9, 2.0]]
    assert monotonic(x, dip).tolist() == [False]
    assert monotonic(x, dip, atol=0.2).tolist() == [True]


def test_monotonic_refuses_repeats_and_bad_tolerance():
    with pytest.raises(InputError, match="distinct"):
        monotonic([0.0, 1.0, 1.0], [[0.0, 1.0, 2.0]])
    for atol in (-1.0, math.nan, math.inf):
        with pytest.raises(SpecError, match="atol"):
            monotonic([0.0, 1.0], [[0.0, 1.0]], atol=atol)


# ---------------------------------------------------------------- steerability_summary


def test_summary_against_direct_computation():
    y = _random_propensity(items=9, seed=5)
    s = steerability_summary(MULTIPLIERS, y)
    exact, bounds = _exact_slopes(MULTIPLIERS, y)
    assert np.all(np.abs(np.array(s.slopes) - exact) <= bounds)
    # The summary of those slopes: the same float64 operations on the same floats, exactly.
    slopes = np.array(s.slopes)
    tol = 1e-6  # monotonic's default step tolerance (a setting, not a rounding bound)
    mono = np.array([np.all(np.diff(row) >= -tol) or np.all(np.diff(row) <= tol) for row in y])
    assert isinstance(s, Steerability)
    assert s.n_items == 9
    assert s.mean_slope == slopes.mean()
    assert s.sd_slope == np.std(slopes, ddof=1)
    assert s.anti_steerable_fraction == (slopes < 0).mean()
    assert s.delta_at_max == (y[:, 4] - y[:, 2]).mean()
    assert s.monotonic == tuple(mono.tolist())
    assert s.n_non_monotonic == int((~mono).sum())
    assert s.non_monotonic_fraction == (~mono).mean()
    if mono.any():
        assert s.mean_slope_monotonic == slopes[mono].mean()


def test_summary_known_anti_steerable_fraction_and_monotonic_slopes():
    x = [0.0, 1.0, 2.0]
    y = [
        [0.0, 1.0, 2.0],  # slope 1
        [0.0, 2.0, 4.0],  # slope 2
        [0.0, -1.0, -2.0],  # slope -1 (anti-steerable)
        [0.0, 3.0, 1.0],  # slope 0.5, not monotonic
    ]
    s = steerability_summary(x, y)
    exact, bounds = _exact_slopes(x, y)
    assert exact.tolist() == [1.0, 2.0, -1.0, 0.5]
    assert np.all(np.abs(np.array(s.slopes) - exact) <= bounds)
    assert s.anti_steerable_fraction == 0.25
    assert s.delta_at_max == (2 + 4 - 2 + 1) / 4  # small integers over 4: exact in float64
    assert s.n_non_monotonic == 1
    assert s.non_monotonic_fraction == 0.25
    # Slopes 1, 2 and -1 are exact (integer rows, centred multipliers -1, 0, 1), so their mean
    # is the one rounding of 2 / 3; the mean of four adds each slope's bound and 4 roundings.
    assert s.mean_slope_monotonic == (1 + 2 - 1) / 3
    bound = bounds.mean() + 4 * 2.0**-53 * np.abs(exact).mean()
    assert abs(s.mean_slope - (1 + 2 - 1 + 0.5) / 4) <= bound


def test_summary_of_one_item_and_of_no_monotonic_item():
    one = steerability_summary([0.0, 1.0], [[0.0, 2.0]])
    assert one.n_items == 1 and math.isnan(one.sd_slope) and one.mean_slope == 2.0
    zigzag = steerability_summary([0.0, 1.0, 2.0], [[0.0, 1.0, 0.0], [0.0, -1.0, 0.5]])
    assert zigzag.n_non_monotonic == 2 and math.isnan(zigzag.mean_slope_monotonic)


def test_summary_delta_uses_largest_multiplier_in_any_order():
    s = steerability_summary([2.0, 0.0, -1.0], [[5.0, 1.0, 0.0]])
    assert s.delta_at_max == 4.0


def test_summary_is_frozen():
    s = steerability_summary([0.0, 1.0], [[0.0, 1.0]])
    with pytest.raises(AttributeError):
        s.mean_slope = 0.0  # type: ignore[misc]


def test_summary_refuses_grids_without_zero_or_positive():
    with pytest.raises(InputError, match="multiplier 0"):
        steerability_summary([0.5, 1.0], [[0.0, 1.0]])
    with pytest.raises(InputError, match="positive multiplier"):
        steerability_summary([-1.0, 0.0], [[0.0, 1.0]])
    with pytest.raises(InputError, match="distinct"):
        steerability_summary([0.0, 1.0, 1.0], [[0.0, 1.0, 1.0]])


# ---------------------------------------------------------------- behaviour rate etc.


def test_behaviour_rate_counts_strictly_positive():
    assert behaviour_rate([0.3, -0.1, 0.0, 2.0, -5.0]) == pytest.approx(0.4)
    assert behaviour_rate(np.array([1.0])) == 1.0
    with pytest.raises(InputError, match="at least 1"):
        behaviour_rate([])
    with pytest.raises(InputError, match="one-dimensional"):
        behaviour_rate([[1.0, 2.0]])
    with pytest.raises(InputError, match="non-finite"):
        behaviour_rate([1.0, np.nan])


@pytest.mark.parametrize(
    ("steered", "base", "expected"),
    [
        (0.8, 0.6, 0.5),
        (1.0, 0.2, 1.0),
        (0.2, 0.2, 0.0),
        (0.4, 0.6, -0.5),
        (0.0, 0.75, -3.0),
        (0.5, 0.0, 0.5),
    ],
)
def test_effectiveness_examples(steered, base, expected):
    assert effectiveness(steered, base) == pytest.approx(expected)


def test_effectiveness_without_headroom_is_nan_and_rates_are_checked():
    assert math.isnan(effectiveness(1.0, 1.0))
    assert math.isnan(effectiveness(0.3, 1.0))
    for steered, base in ((1.2, 0.5), (0.5, -0.1), (50.0, 40.0), (math.nan, 0.5)):
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            effectiveness(steered, base)


def test_entanglement_is_rms_of_changes():
    changes = {"refusal": 0.1, "sycophancy": -0.3, "hallucination": 0.0, "mmlu": -0.05}
    deltas = np.array(list(changes.values()))
    assert entanglement(changes) == pytest.approx(math.sqrt(np.mean(deltas**2)))
    assert entanglement({"mmlu": -0.2}) == pytest.approx(0.2)
    assert math.isnan(entanglement({}))


def test_entanglement_refuses_bad_input():
    with pytest.raises(InputError, match="mapping"):
        entanglement([0.1, 0.2])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="percentages"):
        entanglement({"refusal": 12.0, "mmlu": 0.1})
    with pytest.raises(InputError, match="non-finite"):
        entanglement({"refusal": math.nan})


# ---------------------------------------------------------------- calibrated_multiplier


def test_calibration_interpolates_in_log_multiplier():
    # KL 0.5 at 2 and 1.5 at 8: budget 1.0 is half-way, i.e. at the geometric mean 4.
    assert calibrated_multiplier([1.0, 2.0, 8.0], [0.1, 0.5, 1.5]) == pytest.approx(4.0)
    # a quarter of the way from log 1 to log 16 -> 2
    got = calibrated_multiplier([1.0, 16.0], [0.0, 4.0], budget=1.0)
    assert got == pytest.approx(2.0)


def test_calibration_lands_on_a_grid_point_that_equals_the_budget():
    assert calibrated_multiplier([1.0, 2.0, 4.0], [0.2, 1.0, 3.0]) == pytest.approx(2.0)


def test_calibration_uses_the_first_crossing():
    # crosses between 1 and 2, dips below, crosses again later
    got = calibrated_multiplier([1.0, 2.0, 4.0, 8.0], [0.0, 2.0, 0.5, 3.0])
    assert got == pytest.approx(math.sqrt(2.0))


def test_calibration_below_the_first_point_is_linear_from_the_origin():
    assert calibrated_multiplier([2.0, 4.0], [4.0, 8.0], budget=1.0) == pytest.approx(0.5)
    assert calibrated_multiplier([0.5, 1.0], [2.0, 3.0], budget=2.0) == pytest.approx(0.5)


def test_calibration_returns_none_when_the_budget_is_never_reached():
    assert calibrated_multiplier([1.0, 2.0, 4.0], [0.1, 0.3, 0.99]) is None


def test_calibration_refuses_bad_input():
    with pytest.raises(SpecError, match="budget"):
        calibrated_multiplier([1.0, 2.0], [0.1, 0.2], budget=0.0)
    with pytest.raises(SpecError, match="budget"):
        calibrated_multiplier([1.0, 2.0], [0.1, 0.2], budget=-1.0)
    with pytest.raises(SpecError, match="budget"):
        calibrated_multiplier([1.0, 2.0], [0.1, 0.2], budget=math.nan)
    with pytest.raises(InputError, match="strictly increasing"):
        calibrated_multiplier([1.0, 1.0, 2.0], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="strictly increasing"):
        calibrated_multiplier([2.0, 1.0], [0.1, 0.2])
    with pytest.raises(InputError, match="> 0"):
        calibrated_multiplier([0.0, 1.0], [0.0, 0.2])
    with pytest.raises(InputError, match="one value per multiplier"):
        calibrated_multiplier([1.0, 2.0], [0.1])
    with pytest.raises(InputError, match="at least 1"):
        calibrated_multiplier([], [])
    with pytest.raises(InputError, match="non-finite"):
        calibrated_multiplier([1.0, 2.0], [0.1, math.inf])


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_interval_is_deterministic_and_contains_the_mean():
    values = np.random.default_rng(0).normal(loc=1.0, size=40)
    first = bootstrap_interval(values, seed=7)
    assert first == bootstrap_interval(values, seed=7)
    assert first != bootstrap_interval(values, seed=8)
    low, high = first
    assert low < values.mean() < high


def test_bootstrap_interval_matches_a_direct_percentile_bootstrap():
    values = np.array([0.0, 1.0, 1.0, 3.0, 7.0, 2.0])
    rng = np.random.default_rng(11)
    index = rng.integers(0, values.size, size=(500, values.size))
    replicates = np.median(values[index], axis=1)
    expected = np.quantile(replicates, [0.05, 0.95])
    got = bootstrap_interval(values, np.median, n_boot=500, seed=11, level=0.9)
    assert got == tuple(expected)  # the same draws and the same float64 operations


def test_bootstrap_interval_of_constant_values_and_one_item():
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_interval([5.0], n_boot=10) == (5.0, 5.0)


def test_bootstrap_rows_keeps_columns_paired():
    # column 1 is column 0 plus 1 on every item: the paired difference never varies (multiples
    # of 1/64 below 8 in magnitude: adding and subtracting 1 is exact, so it is exactly 1).
    base = np.round(np.random.default_rng(2).normal(size=30) * 64) / 64
    rows = np.stack([base, base + 1.0], axis=1)
    low, high = bootstrap_rows(rows, lambda b: float(np.mean(b[:, 1] - b[:, 0])), n_boot=200)
    assert low == 1.0 and high == 1.0


def test_bootstrap_rows_agrees_with_bootstrap_interval_on_one_column():
    values = np.array([0.2, 0.5, 0.1, 0.9])
    assert bootstrap_rows(values, np.mean, seed=4) == bootstrap_interval(values, seed=4)


def test_bootstrap_rows_of_steerability_over_items():
    x = MULTIPLIERS
    y = 1.0 + 0.1 * _random_propensity(items=25, seed=9) + np.outer(np.ones(25), x)
    low, high = bootstrap_rows(y, lambda b: item_slopes(x, b).mean(), n_boot=300)
    assert low < item_slopes(x, y).mean() < high


def test_bootstrap_nan_statistic_gives_nan_interval():
    rows = np.array([[1.0], [0.0]])

    def effect(block):
        return effectiveness(0.5, float(block[:, 0].mean()))

    low, high = bootstrap_rows(rows, effect, n_boot=50, seed=0)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_refuses_bad_input():
    with pytest.raises(InputError, match="at least 1"):
        bootstrap_interval([])
    with pytest.raises(InputError, match="one-dimensional"):
        bootstrap_interval([[1.0, 2.0]])
    with pytest.raises(InputError, match="non-finite"):
        bootstrap_interval([1.0, math.nan])
    with pytest.raises(InputError, match="at least one item"):
        bootstrap_rows(np.zeros((0, 3)), np.mean)
    with pytest.raises(SpecError, match="n_boot"):
        bootstrap_interval([1.0, 2.0], n_boot=0)
    with pytest.raises(SpecError, match="n_boot"):
        bootstrap_interval([1.0, 2.0], n_boot=2.5)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="seed"):
        bootstrap_interval([1.0, 2.0], seed=None)  # type: ignore[arg-type]
    for level in (0.0, 1.0, 95.0):
        with pytest.raises(SpecError, match="level"):
            bootstrap_interval([1.0, 2.0], level=level)
    with pytest.raises(SpecError, match="one number"):
        bootstrap_rows(np.ones((3, 2)), lambda b: b.mean(axis=0))


# ---------------------------------------------------------------- spread


def test_spread_against_numpy():
    values = [0.3, 0.1, 0.7, 0.4]
    s = spread(values)
    assert isinstance(s, Spread)
    assert s.n == 4
    assert s.mean == np.mean(values)  # the same float64 operations: exactly
    assert s.sd == np.std(values, ddof=1)
    assert (s.min, s.max) == (0.1, 0.7)


def test_spread_of_one_value_has_nan_sd_and_empty_is_refused():
    s = spread([2.5])
    assert (s.n, s.mean, s.min, s.max) == (1, 2.5, 2.5, 2.5) and math.isnan(s.sd)
    with pytest.raises(InputError):
        spread([])
