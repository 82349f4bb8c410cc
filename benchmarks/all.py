"""Every figure of issue 7 in one command: our scenarios and inspect_ai's on the same fake, one after another.

Run: .venv/bin/python benchmarks/all.py [--quick] [--only NAME ...] [--json FILE]
Runs, in order (each starts and stops what it needs; nothing else should use the machine meanwhile):
  ceiling      ceiling.py: no limit, 1 s latency, 5,000 cases x 2 targets + judge, 3 workers
  in-flight    ceiling.py --in-flight: one worker, 10 s latency, 2 x 1,250 calls in flight at once
  limit-600    fleet.py: 2 models at 600 RPM for two windows (1,200 calls each) + judge, 3 workers
  limit-6000   fleet.py: 2 models at 6,000 RPM for one window (6,000 calls each, 100 in hand per worker) + judge
  limit-tpm    fleet.py: 2 models at 6,000 RPM and 120,000 TPM (binds first: ~210 tokens a call), 1,500 calls each
               (about three minutes: a TPM window overfilled shows as 429s a minute after)
  study        study.py: the study x 6 replayed models at 600 RPM each + judge, API latency sampled meanwhile
  peer-ceiling peer.py: inspect_ai on the ceiling scenario
  peer-limit   peer.py: inspect_ai on limit-600
--quick scales every scenario down (a smoke run of the whole chain in a few minutes; its figures are not the
published ones). Prints each scenario's own report, then one table of every target with our figure, inspect_ai's
where it ran, the ratio and whether the target is met, then one JSON line holding everything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ceiling
import fleet
import harness
import peer
import study

# cases (ceiling, peer ceiling), calls per model at 600 and 6,000 RPM, study subset (None: all), in-flight cases
FULL = {"ceiling": 5000, "limit_600": 1200, "limit_6000": 6000, "limit_tpm": 1500, "study": None, "in_flight": 2000}
QUICK = {"ceiling": 300, "limit_600": 150, "limit_6000": 600, "limit_tpm": 100, "study": 100, "in_flight": 300}
TPM_LIMIT = 120_000


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[dict[str, Any]], dict[str, Any]]


def _ours(module: Any, argv: list[str]) -> dict[str, Any]:
    opts = module.parse_options(argv)
    result: dict[str, Any] = module.measure(opts)
    module.print_report(result, opts)
    return result


def _peer(result: dict[str, Any]) -> dict[str, Any]:
    peer.print_report(result)
    return result


STEPS = [
    Step("ceiling", lambda s: _ours(ceiling, ["--cases", str(s["ceiling"])])),
    # 2 x 1,250 target calls in flight at once, then the judge's: the target of 2,000 in one worker, with room
    Step(
        "in-flight", lambda s: _ours(ceiling, ["--in-flight", "--cases", str(s["in_flight"]), "--concurrency", "1250"])
    ),
    Step("limit-600", lambda s: _ours(fleet, ["--rpm", "600", "--calls", str(s["limit_600"])])),
    # 100 calls a second per model at ~0.5 s: each worker may keep 100 of a model's calls in hand (the default 32
    # leaves half a second of calls waiting for slots, which a busy machine's scheduling can run dry)
    Step(
        "limit-6000", lambda s: _ours(fleet, ["--rpm", "6000", "--calls", str(s["limit_6000"]), "--concurrency", "100"])
    ),
    Step(
        "limit-tpm",
        lambda s: _ours(fleet, ["--rpm", "6000", "--tpm", str(TPM_LIMIT), "--calls", str(s["limit_tpm"])]),
    ),
    Step("study", lambda s: _ours(study, [] if s["study"] is None else ["--limit", str(s["study"])])),
    Step("peer-ceiling", lambda s: _peer(peer.measure_ceiling(s["ceiling"]))),
    Step("peer-limit", lambda s: _peer(peer.measure_limit(600, s["limit_600"]))),
]


@dataclass(frozen=True)
class Target:
    """One of issue 7's targets: a figure of one scenario, compared with a bound (and with inspect_ai's)."""

    label: str
    scenario: str
    key: str
    bound: float | None
    higher_is_better: bool
    peer: str | None = None
    # False where inspect_ai's figure is shown but a ratio would mislead: past the limit is not better (see the note)
    ratio: bool = True


TARGETS = [
    Target("calls/s at the ceiling", "ceiling", "calls_per_s", None, True, "peer-ceiling"),
    Target("CPU ms per call at the ceiling", "ceiling", "cpu_ms_per_call", 4.0, False, "peer-ceiling"),
    Target("calls in flight in one worker", "in-flight", "peak_in_flight", 2000, True),
    Target("that worker's peak RSS, MB", "in-flight", "worker_peak_rss_mb", 400, False),
    Target("achieved / limit at 600 RPM", "limit-600", "achieved_over_limit", 0.98, True, "peer-limit", ratio=False),
    Target("429s per 1,000 calls at 600 RPM", "limit-600", "429_per_1000_calls", 5, False, "peer-limit"),
    Target("wall / floor at 600 RPM", "limit-600", "wall_over_floor", None, False, "peer-limit", ratio=False),
    Target("CPU ms per call at 600 RPM", "limit-600", "cpu_ms_per_call", None, False, "peer-limit"),
    Target("achieved / limit at 6,000 RPM", "limit-6000", "achieved_over_limit", 0.98, True),
    Target("429s per 1,000 calls at 6,000 RPM", "limit-6000", "429_per_1000_calls", 5, False),
    Target("achieved / limit under a TPM limit", "limit-tpm", "achieved_over_limit", 0.98, True),
    Target("429s per 1,000 calls under a TPM limit", "limit-tpm", "429_per_1000_calls", 5, False),
    Target("study-scale wall / floor", "study", "wall_over_floor", 1.1, False),
    Target("study-scale CPU ms per call", "study", "cpu_ms_per_call", 4.0, False),
    Target("GET /v1/jobs/{id} p99 ms while it runs", "study", "get_job_p99_ms", 50, False),
    Target("GET /v1/jobs/{id}/results p99 ms while it runs", "study", "get_results_p99_ms", 300, False),
]


def _met(target: Target, ours: float | None) -> str:
    if target.bound is None or ours is None:
        return ""
    ok = ours >= target.bound if target.higher_is_better else ours <= target.bound
    return "met" if ok else "NOT MET"


def _ratio(target: Target, ours: float | None, theirs: float | None) -> str:
    """How many times better we are than inspect_ai on this figure (over 1: better)."""
    if ours is None or theirs is None or not ours or not theirs:
        return ""
    return f"{ours / theirs if target.higher_is_better else theirs / ours:.2f}x"


def summary(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for t in TARGETS:
        if t.scenario not in results:
            continue
        ours = results[t.scenario].get(t.key)
        theirs = results.get(t.peer or "", {}).get(t.key) if t.peer else None
        better = _ratio(t, ours, theirs) if t.ratio else ""
        rows.append({"figure": t.label, "ours": ours, "inspect_ai": theirs, "better_by": better,
                     "target": t.bound, "verdict": _met(t, ours)})  # fmt: skip
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    print("\n== issue 7: every target, ours against inspect_ai 0.3.285 measured in this run")
    header = f"{'figure':<46} {'ours':>10} {'inspect_ai':>11} {'better by':>10} {'target':>8} {'':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [_cell(row["ours"]), _cell(row["inspect_ai"]), row["better_by"], _cell(row["target"])]
        print(f"{row['figure']:<46} {cells[0]:>10} {cells[1]:>11} {cells[2]:>10} {cells[3]:>8} {row['verdict']:>8}")
    print(
        "inspect_ai does not pace: against the fake's sliding 60 s window it sends a window's worth at once, so its\n"
        "achieved / limit goes above 1 and its wall under the floor, paid for in 429s; no ratio is given for those."
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.3g}" if isinstance(value, float) and value < 10 else f"{value:,}"


def main() -> None:
    harness.exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every scenario scaled down (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run only these scenarios")
    parser.add_argument("--json", help="also write the JSON of every figure to this file")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    speed = harness.machine_speed_us()
    print(f"this host: sum(range(100)) in {speed} us (CPU per call scales with it)", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        if args.only and step.name not in args.only:
            continue
        print(f"\n== {step.name}", flush=True)
        started = time.monotonic()
        try:
            results[step.name] = step.run(sizes)
        except Exception as exc:  # one broken scenario should not hide the others' figures
            print(f"{step.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            results[step.name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"({step.name}: {time.monotonic() - started:.0f} s)", flush=True)
    rows = summary(results)
    print_summary(rows)
    everything = {
        "benchmark": "issue7_all",
        "quick": args.quick,
        "machine_speed_us": speed,
        "summary": rows,
        "scenarios": results,
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(everything, out, indent=1)
    print(json.dumps(everything))


if __name__ == "__main__":
    main()
