"""The client CLI's reports: JUnit XML for CI, Markdown for a pull request, the gate table, plain progress lines."""

from __future__ import annotations

import io
from xml.etree import ElementTree

import pytest
from rich.console import Console

from service import cli_client
from service.client import junit_xml, markdown, progress_line
from service.gates.text import interval

GATE = {
    "verdict": "fail",
    "state": "completed",
    "final": True,
    "configs": [
        {
            "model_config_id": "c1",
            "name": "candidate",
            "verdict": "fail",
            "checks": [
                {"index": 0, "kind": "absolute", "metric": "helps_rate", "cases": "defeated", "figure": 0.41,
                 "ci95": [0.35, 0.47], "op": ">=", "threshold": 0.3, "p_value": 0.0001, "verdict": "pass",
                 "reason": "the 95% interval [0.350, 0.470] is entirely >= 0.3"},
                {"index": 1, "kind": "regression", "metric": "helps_rate", "cases": "defeated", "figure": 0.41,
                 "ci95": [0.36, 0.46], "op": ">=", "baseline": "release-1", "baseline_figure": 0.56,
                 "difference": {"value": -0.15, "ci95": [-0.23, -0.112], "margin": 0.05}, "p_value": 0.0002,
                 "verdict": "fail", "reason": "significant regression: 30 of 40 discordant pairs worse"},
                {"index": 2, "kind": "regression", "metric": "helps_rate", "cases": "defeated", "figure": 0.41,
                 "ci95": [0.36, 0.46], "op": ">=", "baseline": "release-2", "baseline_figure": 0.4,
                 "difference": {"value": 0.01, "ci95": [-0.02, 0.04], "margin": 0.05}, "p_value": 0.6,
                 "verdict": "pass", "reason": "no significant regression"},
                {"index": 3, "kind": "absolute", "metric": "categories.pure_rule_blind", "cases": "control",
                 "figure": 0.1, "ci95": [0.05, 0.19], "op": "<=", "threshold": 0.15, "p_value": 0.2,
                 "verdict": "inconclusive", "reason": "the 95% interval [0.050, 0.190] straddles the threshold 0.15"},
                {"index": 4, "kind": "absolute", "metric": "categories.pure_rule_blind", "cases": "control",
                 "figure": 0.1, "ci95": [0.05, 0.19], "op": "<=", "threshold": 0.2, "p_value": 0.01,
                 "verdict": "pass", "reason": "the 95% interval [0.050, 0.190] is entirely <= 0.2"},
            ],
        }
    ],
}  # fmt: skip


def test_junit_has_a_case_per_check_failing_the_failed_and_erring_the_inconclusive() -> None:
    root = ElementTree.fromstring(junit_xml("job-1", GATE))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == ["candidate"] * 5
    assert [c.find("failure") is not None for c in cases] == [False, True, False, False, False]
    failure = cases[1].find("failure")
    assert failure is not None and "baseline 0.56" in (failure.get("message") or "")
    error = cases[3].find("error")
    assert error is not None and "straddles the threshold 0.15" in (error.get("message") or "")


def test_junit_names_tell_apart_checks_that_differ_only_in_baseline_or_threshold() -> None:
    suite = ElementTree.fromstring(junit_xml("job-1", GATE)).find("testsuite")
    assert suite is not None
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names == [
        "helps_rate (defeated) >= 0.3",
        "helps_rate (defeated) >= baseline release-1",
        "helps_rate (defeated) >= baseline release-2",
        "categories.pure_rule_blind (control) <= 0.15",
        "categories.pure_rule_blind (control) <= 0.2",
    ]
    # two checks alike in every named part still get names of their own
    first = GATE["configs"][0]["checks"][0]  # type: ignore[index]
    twice = {**GATE, "configs": [{**GATE["configs"][0], "checks": [first, {**first, "index": 5}]}]}  # type: ignore[index]
    again = ElementTree.fromstring(junit_xml("job-1", twice)).find("testsuite")
    assert again is not None
    assert len({c.get("name") for c in again.findall("testcase")}) == 2


def test_intervals_are_printed_as_bracketed_pairs() -> None:
    assert interval([-0.23, -0.112]) == "[-0.230, -0.112]"
    assert interval(None) == "-"
    rows = [line for line in markdown("job-1", GATE).splitlines() if line.startswith("| candidate")]
    assert "| [0.350, 0.470] |" in rows[0]
    assert "difference -0.15 [-0.230, -0.112]" in rows[1]


def test_markdown_states_the_verdict_every_check_why_and_what_p_is() -> None:
    text = markdown("job-1", GATE)
    assert text.startswith("### Defeater gate: **fail** (job `job-1`)")
    rows = [line for line in text.splitlines() if line.startswith("| candidate")]
    assert len(rows) == 5
    assert "| >= 0.3 |" in rows[0] and "| pass |" in rows[0]
    assert "baseline 0.56" in rows[1] and rows[1].endswith(
        "| fail | significant regression: 30 of 40 discordant pairs worse |"
    )
    assert rows[3].endswith("| inconclusive | the 95% interval [0.050, 0.190] straddles the threshold 0.15 |")
    assert "one-sided" in text and "binomial" in text and "McNemar" in text


def test_the_gate_table_says_why_a_check_is_inconclusive_and_what_p_is(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = Console(file=io.StringIO(), width=400)
    monkeypatch.setattr(cli_client, "out", shown)
    cli_client._print_gate(GATE)
    printed = shown.file.getvalue()  # type: ignore[attr-defined]
    row = next(line for line in printed.splitlines() if "<= 0.15" in line)
    assert "inconclusive" in row and "straddles the threshold 0.15" in row and "[0.050, 0.190]" in row
    assert "p: one-sided" in printed


def test_a_progress_line_reads_well_in_a_log() -> None:
    status = {"state": "running", "progress": {"requests": {"total": 10, "succeeded": 4, "failed": 1},
              "judgements": {"total": 4, "succeeded": 2, "failed": 0}}, "calls_per_second": 3.25,
              "eta_seconds": 12.4, "cost_usd": 0.5}  # fmt: skip
    assert progress_line(status) == (
        "running: requests 5/10 (failed 1), judgements 2/4, 3.2 units/s, ETA 12 s, $0.5000"
    )
