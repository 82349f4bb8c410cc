"""One-sided exact tests for gate checks: binomial tails against a threshold, McNemar on discordant pairs.

A gate asks a directed question ("is this config worse than the threshold / the baseline?"), so its p-values are
one-sided, unlike the two-sided McNemar p of ``service.results.stats`` that compares configs without a favourite.
"""

from __future__ import annotations

import math

_NEGLIGIBLE = 1e-17
"""A term this small next to the running sum no longer changes a double."""


def binomial_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, exact up to floating-point rounding.

    The small tail (the one away from the mean) is summed outward from its edge, where terms shrink at least
    geometrically, so the sum stops after a few hundred terms even for large ``n`` and keeps its relative
    precision down to the smallest doubles; the large tail is one minus the other (small) one.
    """
    if n < 0 or not 0 <= p <= 1:
        raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if k <= 0:
        return 1.0
    if k > n or p == 0:
        return 0.0
    if p == 1:
        return 1.0
    if k > n * p:
        return _outward(k, n, p, step=1)
    return min(1.0, max(0.0, 1.0 - _outward(k - 1, n, p, step=-1)))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``: the upper tail of ``n - X ~ Binomial(n, 1 - p)``."""
    return binomial_sf(n - k, n, 1.0 - p)


def _log_pmf(i: int, n: int, p: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)


def _outward(start: int, n: int, p: float, step: int) -> float:
    """``pmf(start) + pmf(start + step) + ...`` to the end of the support, for a start in the tail beyond the mode:
    moving outward from there every term is smaller than the one before, so the sum can stop early."""
    odds = p / (1 - p)
    term, total, i = 1.0, 1.0, start
    while 0 <= i + step <= n:
        term *= (n - i) / (i + 1) * odds if step > 0 else i / (n - i + 1) / odds
        i += step
        total += term
        if term < total * _NEGLIGIBLE:
            break
    return min(1.0, math.exp(_log_pmf(start, n, p)) * total)


def mcnemar_one_sided_p(worse: int, better: int) -> float:
    """Exact one-sided McNemar p: ``P(X >= worse)`` with ``X ~ Binomial(worse + better, 1/2)``.

    ``worse`` counts discordant pairs that went the bad way for the candidate, ``better`` the others. In exact
    integers (one correctly rounded division at the end), summing whichever tail is shorter.
    """
    if worse < 0 or better < 0:
        raise ValueError(f"discordant counts must be >= 0, got worse={worse}, better={better}")
    m = worse + better
    if worse == 0:
        return 1.0
    # P(X >= worse) = P(X <= better) by symmetry; sum the short side
    if better <= m // 2:
        return _lower_sum(better, m) / (1 << m)
    return ((1 << m) - _lower_sum(worse - 1, m)) / (1 << m)


def _lower_sum(k: int, m: int) -> int:
    """``sum(comb(m, i) for i in range(k + 1))`` by the running product."""
    term = total = 1
    for i in range(k):
        term = term * (m - i) // (i + 1)
        total += term
    return total
