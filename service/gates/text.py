"""A gate's checks in words, for every reader of a verdict: the CLI table, the JUnit XML, the Markdown summary and
the HTML report. On the API's JSON shape of a check (``CheckResult`` dumped), so that clients use it as they get it.
"""

from __future__ import annotations

from typing import Any, Final

P_VALUE_LEGEND: Final = (
    "p: one-sided, in the failing direction (small = significantly worse). Absolute check (op threshold): exact "
    "binomial test of the figure against the threshold; the 95% interval decides the verdict. Regression check "
    '(baseline): exact McNemar test on the pairs where candidate and baseline differ, against "no worse than the '
    'baseline"; p < alpha fails.'
)
"""What every p-value of a gate is (see ``service.gates.rules``)."""


def number(value: Any) -> str:
    """A figure in four significant digits, an int as it is, ``-`` for none."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def interval(ci: Any) -> str:
    """A 95% interval as ``[-0.230, -0.112]`` (the API sends ``[low, high]``), or ``-``."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def against(check: dict[str, Any]) -> str:
    """What a check's figure is held to: its threshold, or the baseline (with the paired difference)."""
    if check.get("threshold") is not None:
        return f"{check.get('op', '')} {check['threshold']}"
    text = f"baseline {number(check.get('baseline_figure'))}"
    difference = check.get("difference") or {}
    if difference.get("value") is not None:
        text += f", difference {number(difference['value'])} {interval(difference.get('ci95'))}"
    return text


def check_name(check: dict[str, Any]) -> str:
    """A check as a reader tells it from the others: metric, cases, and the threshold or the baseline it is held
    to (``helps_rate (defeated) >= 0.3``, ``helps_rate (defeated) >= baseline release-2026-10``)."""
    name = f"{check['metric']} ({check['cases']})"
    op = f" {check['op']}" if check.get("op") else ""
    if check.get("threshold") is not None:
        return f"{name}{op} {check['threshold']}"
    baseline = check.get("baseline") or check.get("baseline_model_config_id") or "?"
    return f"{name}{op} baseline {baseline}"


def why(check: dict[str, Any]) -> str:
    """The reason the service gives for a check that did not pass (empty for a pass)."""
    return "" if check["verdict"] == "pass" else str(check.get("reason") or "")
