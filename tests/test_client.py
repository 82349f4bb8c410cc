"""The client CLI's reports: JUnit XML for CI, Markdown for a pull request, plain progress lines for logs."""

from __future__ import annotations

from xml.etree import ElementTree

from service.client import junit_xml, markdown, progress_line

GATE = {
    "verdict": "fail",
    "configs": [
        {
            "model_config_id": "c1",
            "name": "candidate",
            "verdict": "fail",
            "checks": [
                {"metric": "helps_rate", "cases": "defeated", "figure": 0.41, "ci95": [0.35, 0.47],
                 "op": ">=", "threshold": 0.3, "p_value": 0.0001, "verdict": "pass"},
                {"metric": "helps_rate", "cases": "defeated", "figure": 0.41, "ci95": [0.36, 0.46],
                 "baseline_figure": 0.56, "difference": {"value": -0.15, "ci95": [-0.2, -0.1], "margin": 0.05},
                 "p_value": 0.0002, "verdict": "fail"},
                {"metric": "categories.pure_rule_blind", "cases": "control", "figure": 0.1, "ci95": None,
                 "op": "<=", "threshold": 0.15, "p_value": None, "verdict": "inconclusive"},
            ],
        }
    ],
}  # fmt: skip


def test_junit_has_a_case_per_check_failing_the_failed_and_erring_the_inconclusive() -> None:
    root = ElementTree.fromstring(junit_xml("job-1", GATE))
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == ["candidate"] * 3
    assert [bool(c.find("failure") is not None) for c in cases] == [False, True, False]
    failure = cases[1].find("failure")
    assert failure is not None and "baseline 0.56" in (failure.get("message") or "")
    assert cases[2].find("error") is not None


def test_markdown_states_the_verdict_and_every_check() -> None:
    text = markdown("job-1", GATE)
    assert text.startswith("### Defeater gate: **fail** (job `job-1`)")
    rows = [line for line in text.splitlines() if line.startswith("| candidate")]
    assert len(rows) == 3
    assert "| >= 0.3 |" in rows[0] and "0.350-0.470" in rows[0] and rows[0].endswith("| pass |")
    assert "baseline 0.56" in rows[1] and rows[1].endswith("| fail |")


def test_a_progress_line_reads_well_in_a_log() -> None:
    status = {"state": "running", "progress": {"requests": {"total": 10, "succeeded": 4, "failed": 1},
              "judgements": {"total": 4, "succeeded": 2, "failed": 0}}, "calls_per_second": 3.25,
              "eta_seconds": 12.4, "cost_usd": 0.5}  # fmt: skip
    assert progress_line(status) == ("running: requests 5/10 (failed 1), judgements 2/4, 3.2 calls/s, ETA 12 s, $0.50")
