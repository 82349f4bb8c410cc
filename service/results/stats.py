"""Small, pure statistics for results: Wilson intervals, exact McNemar, paired differences, agreement.

Counts stay exact integers (or fractions) until the last step; only the final value becomes a float.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple, cast

Z95 = 1.959963984540054
"""The two-sided 95% standard normal quantile."""

LabelPair = tuple[Hashable, Hashable]


class Interval(NamedTuple):
    """A closed interval; a ``tuple[float, float]`` wherever one is expected."""

    low: float
    high: float


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """The Wilson score interval of ``successes / n``; None when ``n == 0``.

    Always within [0, 1] and containing the point estimate (rounding is clamped away).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p)))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p: ``min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``.

    The tail is an exact integer sum of binomial coefficients, divided once (correctly rounded), so it
    neither overflows nor loses precision; a p below the smallest positive double rounds to 0.0.
    About 0.2 s at ``b + c = 50,000``.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    if 2 * k >= n:  # b == c (including 0, 0): the tail holds at least half the mass
        return 1.0
    term = total = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, total / (1 << (n - 1)))


def paired_difference_ci(b: int, c: int, n: int, z: float = Z95) -> Interval | None:
    """Agresti-Min adjusted Wald interval for ``p_a - p_b`` over ``n`` pairs; None when ``n == 0``.

    ``b`` counts pairs where only a has the property, ``c`` pairs where only b has it. Adding 1/2 to each
    of the four cells gives ``n' = n + 2``, ``b' = b + 1/2``, ``c' = c + 1/2`` and::

        d  = (b' - c') / n' = (b - c) / (n + 2)
        se = sqrt((b' + c') / n' - d**2) / sqrt(n')
        CI = [d - z * se, d + z * se], clipped to [-1, 1]

    The concordant cells drop out: only their total ``n - b - c`` enters, through ``n``.
    At 95% (and wider) the interval always contains the sample difference ``(b - c) / n``.
    """
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need b, c >= 0 and b + c <= n, got b={b}, c={c}, n={n}")
    if n == 0:
        return None
    n_adj = n + 2
    d = (b - c) / n_adj
    se = math.sqrt(max(0.0, (b + c + 1) / n_adj - d * d) / n_adj)
    return Interval(max(-1.0, d - z * se), min(1.0, d + z * se))


def raw_agreement(pairs: Sequence[LabelPair]) -> float | None:
    """The share of items on which the two raters agree; None when there are none."""
    if not pairs:
        return None
    return sum(1 for first, second in pairs if first == second) / len(pairs)


def cohen_kappa(pairs: Sequence[LabelPair]) -> float | None:
    """Cohen's kappa of two raters, one ``(rater1, rater2)`` label pair per item; None when there are none.

    ``(p_o - p_e) / (1 - p_e)`` in exact integers. When chance agreement is 1 (both raters gave every item
    the same single label) observed agreement is 1 too, and kappa is 1.0.
    """
    n = len(pairs)
    if n == 0:
        return None
    agree = sum(1 for first, second in pairs if first == second)
    firsts = Counter(first for first, _ in pairs)
    seconds = Counter(second for _, second in pairs)
    chance = sum(count * seconds[label] for label, count in firsts.items())  # p_e * n**2
    if chance == n * n:
        return 1.0
    return (n * agree - chance) / (n * n - chance)


def confusion(pairs: Sequence[LabelPair], labels: Sequence[Hashable] | None = None) -> dict[str, dict[str, int]]:
    """Counts ``[str(rater1 label)][str(rater2 label)]``, with a row and a column for every label.

    ``labels`` defaults to the sorted union of both raters' labels; a label outside ``labels`` is an error.
    """
    if labels is None:
        labels = _sorted_union({label for pair in pairs for label in pair})
    keys = {label: str(label) for label in labels}
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"labels must have distinct str() forms: {list(labels)!r}")
    table = {row: dict.fromkeys(keys.values(), 0) for row in keys.values()}
    for first, second in pairs:
        if first not in keys or second not in keys:
            raise ValueError(f"label pair {(first, second)!r} is not in the labels {list(labels)!r}")
        table[keys[first]][keys[second]] += 1
    return table


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa; each item is the labels its ``m >= 2`` raters gave it.

    ``m`` is the most common rating count among items with at least two ratings (the larger on a tie);
    items with another count are skipped. None without a usable item, or when chance agreement is 1.
    """
    counts = Counter(len(item) for item in items if len(item) >= 2)
    if not counts:
        return None
    m = max(counts, key=lambda size: (counts[size], size))
    usable = [Counter(item) for item in items if len(item) == m]
    n_items = len(usable)
    totals: Counter[Hashable] = Counter()
    for item in usable:
        totals.update(item)
    observed = Fraction(sum(c * c for item in usable for c in item.values()) - n_items * m, n_items * m * (m - 1))
    chance = Fraction(sum(t * t for t in totals.values()), (n_items * m) ** 2)
    if chance == 1:
        return None
    return float((observed - chance) / (1 - chance))


def _sorted_union(labels: set[Hashable]) -> list[Hashable]:
    """The labels in their natural order, or ordered by ``repr`` when they do not compare."""
    try:
        return sorted(cast("set[Any]", labels))
    except TypeError:
        return sorted(labels, key=repr)
