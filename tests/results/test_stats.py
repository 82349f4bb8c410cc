"""The results statistics against textbook values, independent closed forms, and their invariants."""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.results.stats import (
    Z95,
    cohen_kappa,
    confusion,
    fleiss_kappa,
    mcnemar_exact_p,
    paired_difference_ci,
    raw_agreement,
    wilson,
)


def _wilson_by_quadratic(k: int, n: int) -> tuple[float, float]:
    """The Wilson bounds as the roots of ``(k/n - p)**2 = z**2 p (1 - p) / n``, solved directly."""
    p_hat, z2 = k / n, Z95 * Z95
    a, b, c = 1 + z2 / n, -(2 * p_hat + z2 / n), p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def _exact_mcnemar(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    return float(min(Fraction(1), 2 * Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)))


counts = st.integers(min_value=0, max_value=500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))
labels = st.sampled_from(["helps", "refuses", "deflects", "engages"])
label_pairs = st.lists(st.tuples(labels, labels), min_size=1, max_size=60)


# Wilson


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (5, 10), (1, 3), (37, 250)])
def test_wilson_matches_the_roots_of_its_quadratic(k: int, n: int) -> None:
    interval = wilson(k, n)
    assert interval is not None
    assert interval == pytest.approx(_wilson_by_quadratic(k, n), abs=1e-12)


def test_wilson_textbook_values() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_wilson_of_nothing_is_none_and_bad_counts_are_refused() -> None:
    assert wilson(0, 0) is None
    for k, n in [(-1, 5), (6, 5), (0, -1)]:
        with pytest.raises(ValueError):
            wilson(k, n)


@given(counts)
def test_wilson_is_within_unit_interval_and_contains_the_estimate(kn: tuple[int, int]) -> None:
    k, n = kn
    interval = wilson(k, n)
    if n == 0:
        assert interval is None
        return
    assert interval is not None
    assert 0.0 <= interval.low <= k / n <= interval.high <= 1.0


@given(counts.filter(lambda kn: kn[1] > 0), st.integers(min_value=2, max_value=50))
def test_wilson_narrows_as_n_grows_at_a_fixed_proportion(kn: tuple[int, int], factor: int) -> None:
    k, n = kn
    small, large = wilson(k, n), wilson(k * factor, n * factor)
    assert small is not None and large is not None
    assert large.high - large.low < small.high - small.low


# McNemar


def test_mcnemar_textbook_values() -> None:
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert round(mcnemar_exact_p(10, 2), 4) == 0.0386
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(7, 7) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 3)


@given(st.integers(0, 500), st.integers(0, 500))
def test_mcnemar_is_exact_symmetric_and_a_probability(b: int, c: int) -> None:
    p = mcnemar_exact_p(b, c)
    assert p == mcnemar_exact_p(c, b)
    assert 0.0 < p <= 1.0
    assert p == pytest.approx(_exact_mcnemar(b, c), rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(20_000, 19_000), (25_001, 24_999), (19_000, 20_000), (30_000, 20_000)])
def test_mcnemar_large_counts_are_fast_finite_and_near_the_normal_approximation(b: int, c: int) -> None:
    started = time.perf_counter()
    p = mcnemar_exact_p(b, c)
    assert time.perf_counter() - started < 1.0
    assert math.isfinite(p) and 0.0 <= p <= 1.0
    z = (abs(b - c) - 1) / math.sqrt(b + c)  # continuity-corrected normal approximation
    normal = math.erfc(z / math.sqrt(2))
    if normal > 1e-300:
        assert p == pytest.approx(normal, rel=0.05)


def test_mcnemar_large_counts_give_a_small_p() -> None:
    p = mcnemar_exact_p(20_000, 19_000)
    assert 1e-7 < p < 1e-6


# paired difference


def test_paired_difference_matches_the_agresti_min_formula() -> None:
    b, c, n = 15, 5, 100
    n_adj, b_adj, c_adj = n + 2, b + 0.5, c + 0.5
    d = (b_adj - c_adj) / n_adj
    se = math.sqrt(((b_adj + c_adj) / n_adj - d * d) / n_adj)
    assert paired_difference_ci(b, c, n) == pytest.approx((d - Z95 * se, d + Z95 * se))
    assert paired_difference_ci(0, 0, 0) is None
    for bad in [(5, 6, 10), (-1, 0, 3)]:
        with pytest.raises(ValueError):
            paired_difference_ci(*bad)


def test_paired_difference_is_clipped_to_minus_one_one() -> None:
    all_a, all_b = paired_difference_ci(10, 0, 10), paired_difference_ci(0, 3, 3)
    assert all_a is not None and all_a.high == 1.0 and all_a.low < 1.0
    assert all_b is not None and all_b.low == -1.0 and all_b.high > -1.0


@given(st.integers(1, 2_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.data())
def test_paired_difference_contains_the_sample_difference(bn: tuple[int, int], data: st.DataObject) -> None:
    b, n = bn
    c = data.draw(st.integers(0, n - b))
    interval = paired_difference_ci(b, c, n)
    assert interval is not None
    assert -1.0 <= interval.low <= (b - c) / n <= interval.high <= 1.0
    mirrored = paired_difference_ci(c, b, n)
    assert mirrored == pytest.approx((-interval.high, -interval.low))


# Cohen's kappa, raw agreement, confusion


def _table(yes_yes: int, yes_no: int, no_yes: int, no_no: int) -> list[tuple[Hashable, Hashable]]:
    cells = [(("yes", "yes"), yes_yes), (("yes", "no"), yes_no), (("no", "yes"), no_yes), (("no", "no"), no_no)]
    return [pair for pair, count in cells for _ in range(count)]


def test_cohen_kappa_textbook_example() -> None:
    pairs = _table(20, 5, 10, 15)
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert raw_agreement(pairs) == pytest.approx(0.7)
    assert confusion(pairs) == {"no": {"no": 15, "yes": 10}, "yes": {"no": 5, "yes": 20}}


def test_cohen_kappa_edges() -> None:
    assert cohen_kappa([]) is None
    assert raw_agreement([]) is None
    assert cohen_kappa([("a", "a")] * 4) == 1.0
    assert cohen_kappa(_table(0, 5, 5, 0)) == pytest.approx(-1.0)


@given(st.lists(labels, min_size=2).filter(lambda xs: len(set(xs)) > 1))
def test_cohen_kappa_of_identical_raters_is_one(ratings: list[str]) -> None:
    assert cohen_kappa([(r, r) for r in ratings]) == 1.0


@given(label_pairs)
def test_cohen_kappa_is_symmetric_and_bounded(pairs: list[tuple[Hashable, Hashable]]) -> None:
    kappa = cohen_kappa(pairs)
    assert kappa is not None
    assert kappa == cohen_kappa([(second, first) for first, second in pairs])
    assert -1.0 <= kappa <= 1.0


@given(label_pairs)
def test_confusion_counts_every_pair_once(pairs: list[tuple[Hashable, Hashable]]) -> None:
    table = confusion(pairs, labels=["helps", "refuses", "deflects", "engages"])
    assert list(table) == ["helps", "refuses", "deflects", "engages"]
    assert all(list(row) == list(table) for row in table.values())
    assert sum(sum(row.values()) for row in table.values()) == len(pairs)
    assert sum(table[label][label] for label in table) / len(pairs) == raw_agreement(pairs)


def test_confusion_labels_default_to_the_sorted_union_and_unknown_labels_are_refused() -> None:
    assert confusion([(2, 10), (10, 10)]) == {"2": {"2": 0, "10": 1}, "10": {"2": 0, "10": 1}}
    assert confusion([], labels=["x"]) == {"x": {"x": 0}}
    with pytest.raises(ValueError):
        confusion([("a", "b")], labels=["a"])
    with pytest.raises(ValueError):
        confusion([], labels=[1, "1"])


# Fleiss' kappa

WIKIPEDIA_FLEISS = [  # 10 items x 5 categories, 14 raters each
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _ratings(row: list[int]) -> list[Hashable]:
    return [category for category, count in enumerate(row) for _ in range(count)]


def test_fleiss_kappa_wikipedia_example() -> None:
    kappa = fleiss_kappa([_ratings(row) for row in WIKIPEDIA_FLEISS])
    assert kappa is not None
    assert round(kappa, 3) == 0.210


def test_fleiss_kappa_skips_items_with_another_rating_count() -> None:
    items = [_ratings(row) for row in WIKIPEDIA_FLEISS]
    padded: list[list[Hashable]] = [*items, ["a", "b", "c"], [0], [1, 2, 3, 4, 0]]
    assert fleiss_kappa(padded) == fleiss_kappa(items)


def test_fleiss_kappa_edges() -> None:
    assert fleiss_kappa([]) is None
    assert fleiss_kappa([["a"], ["b"]]) is None
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) is None  # chance agreement is 1
    assert fleiss_kappa([["a", "a", "a"], ["b", "b", "b"]]) == 1.0


@given(st.lists(st.lists(labels, min_size=3, max_size=3), min_size=1, max_size=30))
def test_fleiss_kappa_is_at_most_one(items: list[list[Hashable]]) -> None:
    kappa = fleiss_kappa(items)
    assert kappa is None or kappa <= 1.0
