"""The arithmetic of the scenarios' reports: percentiles, latency figures, the steady rate, the timeline."""

from __future__ import annotations

from typing import Any

import pytest
import scenario
from scenario import Sample


def test_percentiles_are_nearest_rank() -> None:
    ordered = [float(v) for v in range(1, 101)]
    assert scenario.percentile(ordered, 50) == 50.0
    assert scenario.percentile(ordered, 99) == 99.0
    assert scenario.percentile(ordered, 100) == 100.0
    assert scenario.percentile([7.0], 99) == 7.0


def test_latency_figures_leave_failed_requests_out_of_the_percentiles() -> None:
    samples = [Sample(at=i, latency_s=i / 1000, status=200, value=None) for i in range(1, 11)]
    samples += [
        Sample(at=11, latency_s=5.0, status=None, value=None),
        Sample(at=12, latency_s=4.0, status=500, value=None),
    ]
    figures = scenario.latency_figures(samples)
    assert figures == {"count": 12, "failed": 2, "p50_ms": 5.0, "p95_ms": 10.0, "p99_ms": 10.0, "max_ms": 10.0}


def test_latency_figures_of_no_answer_are_none() -> None:
    figures = scenario.latency_figures([Sample(at=0, latency_s=1.0, status=None, value=None)])
    assert figures["count"] == 1 and figures["p99_ms"] is None


def _counts(points: list[tuple[float, int]]) -> list[Sample]:
    return [Sample(at=at, latency_s=0.0, status=200, value=value) for at, value in points]


def test_the_steady_rate_is_taken_over_the_middle_of_the_run() -> None:
    # a slow start (10/s), a steady middle (100/s from t=2 to t=8), a slow end; the run ends at t=10
    samples = _counts([(0, 0), (2, 20), (8, 620), (10, 640), (11, 640), (12, 640)])
    assert scenario.steady_rate(samples, start=0.0) == pytest.approx(100.0)
    assert scenario.steady_rate(samples, start=0.0, middle=1.0) == pytest.approx(64.0)


def test_the_steady_rate_needs_samples() -> None:
    assert scenario.steady_rate(_counts([(0, 0), (1, 10)]), start=0.0) is None


def test_settings_are_name_value_pairs() -> None:
    assert scenario.parse_settings(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        scenario.parse_settings(["A"])


def _book(**by_model: dict[str, Any]) -> dict[str, Any]:
    return {"by_model": by_model}


def test_the_timeline_splits_the_jobs_wall_time_around_the_target_successes() -> None:
    status = {"created_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00"}
    base = 1767225600.0  # 2026-01-01T00:00:00Z
    book = _book(
        a={"first_at": base + 2, "last_at": base + 50},
        b={"first_at": base + 3, "last_at": base + 55},
        judge={"first_at": base + 4, "last_at": base + 58},
    )
    assert scenario.timeline(status, book, ["a", "b"], client_wall_s=99.0) == {
        "wall_s": 60.0,
        "to_first_success_s": 2.0,
        "successes_span_s": 53.0,
        "after_last_success_s": 5.0,
        "last_call_to_finished_s": 2.0,
    }


def test_an_unfinished_job_has_the_clients_wall_time() -> None:
    status = {"created_at": "2026-01-01T00:00:00+00:00", "finished_at": None}
    assert scenario.timeline(status, _book(), ["a"], client_wall_s=12.5) == {"wall_s": 12.5}


def test_model_figures_compare_with_the_limit_only_when_there_is_one() -> None:
    entry = {"calls": 101, "successes": 100, "rate_limited": 1, "first_at": 0.0, "last_at": 9.9, "achieved_rpm": 606.1}
    limited = scenario.model_figures(entry, 600, wall_s=12.0)
    assert limited["429_per_1000_calls"] == 9.9
    assert limited["interval_rpm"] == 600.0
    assert limited["wall_over_limit"] == pytest.approx(500 / 600, abs=1e-4)
    assert "achieved_over_limit" not in scenario.model_figures(entry, None, wall_s=12.0)
