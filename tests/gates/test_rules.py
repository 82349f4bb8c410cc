"""The verdict rules on hand-made counts: where the interval lies decides an absolute check; a significant paired
regression fails, a ruled-out one passes, and too little evidence or too many missing labels stays inconclusive."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service.gates.rules import Coverage, Op, Paired, Verdict, absolute, combine, default_op, regression
from service.results.stats import wilson

FULL = Coverage(units=1000, missing=0)
ORDER: dict[Verdict, int] = {"fail": 0, "inconclusive": 1, "pass": 2}


@pytest.mark.parametrize(
    ("count", "n", "op", "threshold", "verdict"),
    [
        (60, 100, ">=", 0.30, "pass"),
        (10, 100, ">=", 0.30, "fail"),
        (28, 100, ">=", 0.30, "inconclusive"),
        (5, 100, "<=", 0.15, "pass"),
        (30, 100, "<=", 0.15, "fail"),
        (14, 100, "<=", 0.15, "inconclusive"),
        (3, 10, ">=", 0.30, "inconclusive"),  # a tiny group: the interval is wide
    ],
)
def test_the_wilson_interval_decides_an_absolute_check(
    count: int, n: int, op: Op, threshold: float, verdict: Verdict
) -> None:
    outcome = absolute(count, n, op, threshold, FULL, 0.02)
    assert outcome.verdict == verdict, outcome.reason
    assert outcome.figure == count / n and outcome.ci95 == wilson(count, n) and outcome.n == n


def test_an_absolute_p_value_is_small_only_on_the_failing_side() -> None:
    failing = absolute(10, 100, ">=", 0.30, FULL, 0.02)
    assert failing.p_value is not None and failing.p_value < 1e-5
    passing = absolute(60, 100, ">=", 0.30, FULL, 0.02)
    assert passing.p_value is not None and passing.p_value > 0.99
    above = absolute(30, 100, "<=", 0.15, FULL, 0.02)
    assert above.p_value is not None and above.p_value < 1e-3


def test_missing_labels_over_the_tolerance_make_any_check_inconclusive() -> None:
    assert absolute(60, 100, ">=", 0.30, Coverage(103, 3), 0.02).verdict == "inconclusive"
    assert absolute(60, 100, ">=", 0.30, Coverage(102, 2), 0.02).verdict == "pass"
    clear_regression = Paired(pairs=300, candidate_yes=30, baseline_yes=90, candidate_only=5, baseline_only=65)
    shown = regression(clear_regression, ">=", 0.05, 0.05, Coverage(700, 50), 0.02)
    assert shown.verdict == "inconclusive" and "lack a usable label" in shown.reason
    assert shown.p_value is not None and shown.p_value < 1e-10  # the figures are still reported


def test_nothing_judged_is_inconclusive() -> None:
    assert absolute(0, 0, ">=", 0.3, Coverage(5, 5), 1.0).verdict == "inconclusive"
    assert regression(Paired(0, 0, 0, 0, 0), ">=", 0.05, 0.05, FULL, 0.02).verdict == "inconclusive"


@pytest.mark.parametrize(
    ("paired", "op", "verdict"),
    [
        (Paired(500, 200, 200, 0, 0), ">=", "pass"),  # identical answers on enough cases
        (Paired(10, 4, 4, 0, 0), ">=", "inconclusive"),  # identical, but 10 pairs cannot rule out 0.05
        (Paired(300, 30, 90, 5, 65), ">=", "fail"),  # helps much less than the baseline
        (Paired(300, 30, 90, 5, 65), "<=", "pass"),  # the same counts when less is better: an improvement
        (Paired(300, 90, 95, 15, 20), ">=", "inconclusive"),  # slightly worse, not significantly, not ruled out
        (Paired(2000, 600, 610, 40, 50), ">=", "pass"),  # slightly worse, but a large drop is ruled out
    ],
)
def test_a_regression_check_fails_on_significance_and_passes_on_a_ruled_out_margin(
    paired: Paired, op: Op, verdict: Verdict
) -> None:
    outcome = regression(paired, op, 0.05, 0.05, FULL, 0.02)
    assert outcome.verdict == verdict, outcome.reason
    assert outcome.figure == paired.candidate_yes / paired.pairs
    assert outcome.baseline_figure == paired.baseline_yes / paired.pairs
    assert outcome.difference == (paired.candidate_only - paired.baseline_only) / paired.pairs
    if verdict == "fail":
        assert outcome.p_value is not None and outcome.p_value < 1e-10


@given(count=st.integers(0, 400), extra=st.integers(0, 400), t=st.floats(0, 1), op=st.sampled_from([">=", "<="]))
def test_absolute_verdicts_follow_the_interval_and_the_figure(count: int, extra: int, t: float, op: Op) -> None:
    n = count + extra
    assume(n > 0)
    outcome = absolute(count, n, op, t, FULL, 0.02)
    interval = wilson(count, n)
    assert interval is not None
    low, high = interval

    def better(x: float) -> bool:
        return x >= t if op == ">=" else x <= t

    if outcome.verdict == "pass":
        assert better(low) and better(high) and better(count / n)
    elif outcome.verdict == "fail":
        assert not better(low) and not better(high) and not better(count / n)
    else:
        assert better(low) != better(high)
    # one more answer on the better side never makes the verdict worse
    step = 1 if op == ">=" else 0
    more = absolute(count + step, n + 1, op, t, FULL, 0.02)
    assert ORDER[more.verdict] >= ORDER[outcome.verdict]


@given(
    same=st.integers(0, 500),
    disc=st.integers(0, 200),
    op=st.sampled_from([">=", "<="]),
    alpha=st.sampled_from([0.01, 0.05, 0.1]),
    margin=st.sampled_from([0.0, 0.02, 0.05, 0.1]),
)
def test_balanced_disagreement_never_fails(same: int, disc: int, op: Op, alpha: float, margin: float) -> None:
    assume(same + 2 * disc > 0)
    outcome = regression(Paired(same + 2 * disc, disc, disc, disc, disc), op, alpha, margin, FULL, 0.02)
    assert outcome.verdict != "fail"
    assert outcome.p_value is not None and outcome.p_value >= 0.5


@given(
    concordant=st.integers(0, 500),
    cand_only=st.integers(0, 100),
    base_only=st.integers(0, 100),
    alpha=st.sampled_from([0.01, 0.05]),
)
def test_regression_verdicts_are_consistent(concordant: int, cand_only: int, base_only: int, alpha: float) -> None:
    n = concordant + cand_only + base_only
    assume(n > 0)
    paired = Paired(n, cand_only, base_only, cand_only, base_only)
    higher = regression(paired, ">=", alpha, 0.05, FULL, 0.02)
    assert higher.p_value is not None
    assert (higher.verdict == "fail") == (higher.p_value < alpha)
    if higher.verdict == "pass":
        assert higher.difference_ci95 is not None and higher.difference_ci95.low >= -0.05
    # mirrored: the candidate's and the baseline's roles swapped, with lower as the better side
    mirrored = regression(Paired(n, base_only, cand_only, base_only, cand_only), "<=", alpha, 0.05, FULL, 0.02)
    assert mirrored.verdict == higher.verdict and mirrored.p_value == higher.p_value
    # one more pair going the candidate's way never makes the verdict worse
    better = regression(
        Paired(n + 1, cand_only + 1, base_only, cand_only + 1, base_only), ">=", alpha, 0.05, FULL, 0.02
    )
    assert ORDER[better.verdict] >= ORDER[higher.verdict]


def test_default_directions() -> None:
    assert default_op("helps_rate", "defeated") == ">="
    assert default_op("helps_rate", "family:content_defeat") == ">="
    assert default_op("engagement_rate", "defeated") == ">="
    assert default_op("categories.pure_rule_blind", "defeated") == "<="
    assert default_op("refusal_rate", "family:illegitimate_authority") == "<="
    assert default_op("helps_rate", "control") == "<="
    assert default_op("helps_rate", "family:control") == "<="
    assert default_op("refusal_rate", "control") == ">="
    # no obvious better side: the check has to say
    assert default_op("independent_harm_rate", "defeated") is None
    assert default_op("helps_rate", "all") is None
    assert default_op("helps_rate", "dual_use:true") is None
    assert default_op("engagement_rate", "control") is None


def test_the_gate_passes_only_if_every_check_passes() -> None:
    assert combine(["pass", "pass"]) == "pass"
    assert combine(["pass", "inconclusive"]) == "inconclusive"
    assert combine(["inconclusive", "fail", "pass"]) == "fail"
    assert combine([]) == "inconclusive"
