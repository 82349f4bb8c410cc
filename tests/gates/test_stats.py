"""The gates' one-sided tests against exact fractions, and their precision and speed at the study's scale."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.gates.stats import binomial_cdf, binomial_sf, mcnemar_one_sided_p
from service.results.stats import mcnemar_exact_p


def _exact_sf(k: int, n: int, p: float) -> Fraction:
    q = Fraction(p)
    return sum((math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(max(k, 0), n + 1)), Fraction(0))


@given(
    n=st.integers(0, 60),
    k=st.integers(-2, 62),
    p=st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.3, 0.15]), st.floats(1e-4, 1 - 1e-4)),
)
def test_binomial_tails_match_exact_sums(n: int, k: int, p: float) -> None:
    upper, lower = float(_exact_sf(k, n, p)), float(1 - _exact_sf(k + 1, n, p))
    assert binomial_sf(k, n, p) == pytest.approx(upper, rel=1e-9, abs=1e-15)
    assert binomial_cdf(k, n, p) == pytest.approx(lower, rel=1e-9, abs=1e-15)


def test_small_tails_keep_their_relative_precision_at_scale() -> None:
    assert binomial_cdf(0, 1000, 0.5) == pytest.approx(2.0**-1000, rel=1e-9)
    assert binomial_sf(1000, 1000, 0.5) == pytest.approx(2.0**-1000, rel=1e-9)
    # 10% helps on 1,081 defeated cases against a 0.30 threshold: far below anything a double rounds to 1
    tiny = binomial_cdf(105, 1081, 0.30)
    assert 0 < tiny < 1e-40
    p = Fraction(3, 10)
    assert tiny == pytest.approx(
        float(sum(math.comb(1081, i) * p**i * (1 - p) ** (1081 - i) for i in range(106))), rel=1e-9
    )


def test_tails_are_fast_at_full_study_scale() -> None:
    start = time.perf_counter()
    for k in range(0, 50_001, 2_500):
        binomial_sf(k, 50_000, 0.3)
        binomial_cdf(k, 50_000, 0.3)
    assert time.perf_counter() - start < 0.5


@given(worse=st.integers(0, 80), better=st.integers(0, 80))
def test_one_sided_mcnemar_is_the_exact_upper_tail(worse: int, better: int) -> None:
    m = worse + better
    want = Fraction(sum(math.comb(m, i) for i in range(worse, m + 1)), 2**m)
    assert mcnemar_one_sided_p(worse, better) == float(want)
    # the two-sided test is twice the smaller one-sided tail
    two_sided = min(1.0, 2 * min(mcnemar_one_sided_p(worse, better), mcnemar_one_sided_p(better, worse)))
    assert mcnemar_exact_p(worse, better) == pytest.approx(two_sided, rel=1e-12)


def test_one_sided_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_one_sided_p(-1, 3)
