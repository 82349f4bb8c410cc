"""The ceiling, distributed: how many provider calls a second can `defeater api` and W `defeater worker` processes
drive when no provider limit holds them back, what each call costs in CPU, and how many calls are in flight at once.
With --in-flight: can ONE worker hold thousands of calls in flight (a slow provider), and in how much memory?

Run: .venv/bin/python benchmarks/ceiling.py [--cases 5000] [--workers 3] [--concurrency 1000] [--latency 1]
                                            [--set NAME=VALUE ...] [--keep] [--timeout S]
     .venv/bin/python benchmarks/ceiling.py --in-flight [--cases 2000] [--concurrency 2500] [--latency 10] ...
Everything runs as child processes of this script: a fresh Postgres database (dropped afterwards) and Redis db 9
(flushed before and after), the fake provider (no limits, a fixed LATENCY before each answer), `defeater api` and
the workers. Through the REST API it imports CASES distinct cases, registers two target configs (OpenAI and
Anthropic wire formats) and a Gemini-format judge, each with `limits: {"max_concurrency": CONCURRENCY}`, creates the
job (CASES x 2 target calls + as many judge calls) and waits for it, printing progress to stderr.

--in-flight changes the defaults to one worker, 2,000 cases, a concurrency of 2,500 per config and 10 s of latency,
and gives the api and worker the setting DEFEATER_PROVIDERS__MAX_CONNECTIONS=5000 (the default, 1,000 connections
per provider client, would cap what is in flight below the target); --set NAME=VALUE adds or overrides such settings
in either mode.

Prints: provider calls per second (over the job's wall time, and steady over the middle half of the run, from the
fake's call count read every second), peak calls in flight at the fake (per model and overall), CPU ms per call of
the api and workers together (the workers alone, and the fake's apart), peak RSS per process, and the fake's
duplicate successes (must be 0). One JSON line of figures closes the output.
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import harness
import httpx
import scenario

TARGETS = (("openai", "ceiling-openai-0"), ("anthropic", "ceiling-anthropic-1"))
JUDGE = ("google", "judge-g")
REDIS_DB = 9
LEDGER_EVERY_S = 1.0
# the in-flight mode's defaults, and what the brief asks of it
IN_FLIGHT_DEFAULTS = {"workers": 1, "cases": 2000, "concurrency": 2500, "latency": 10.0}
CEILING_DEFAULTS = {"workers": 3, "cases": 5000, "concurrency": 1000, "latency": 1.0}
IN_FLIGHT_SETTINGS = {"DEFEATER_PROVIDERS__MAX_CONNECTIONS": "5000"}
IN_FLIGHT_TARGET = 2000
RSS_TARGET_MB = 400.0


@dataclass(frozen=True)
class Options:
    cases: int
    workers: int
    concurrency: int
    latency: float
    in_flight: bool
    keep: bool
    timeout: float | None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        """Target and judge calls the job needs."""
        return 2 * len(TARGETS) * self.cases

    @property
    def name(self) -> str:
        return "in_flight" if self.in_flight else "ceiling"


def fake_config(opts: Options) -> dict[str, Any]:
    return {"latency": {"distribution": "fixed", "mean_s": opts.latency}}


def prepare(client: httpx.Client, opts: Options, fake: str) -> dict[str, Any]:
    """Import the dataset and register the configs; returns the body of the job to create."""
    tag = uuid.uuid4().hex[:6]
    dataset = scenario.import_dataset(client, f"{opts.name}-{tag}", harness.study_cases(opts.cases))
    limits = {"max_concurrency": opts.concurrency}
    targets = [
        scenario.register(client, scenario.config_body(f"{opts.name}-{i}-{tag}", provider, model, fake, limits))
        for i, (provider, model) in enumerate(TARGETS)
    ]
    judge = scenario.register(client, scenario.config_body(f"judge-{tag}", *JUDGE, fake, limits))
    return {"dataset_id": dataset, "model_config_ids": targets, "judge_config_ids": [judge]}


def figures(opts: Options, run: scenario.JobRun, counted: scenario.Poller) -> dict[str, Any]:
    times = scenario.timeline(run.status, run.book, [model for _, model in TARGETS], run.wall_s)
    steady = scenario.steady_rate(counted.samples, run.started_at)
    per_model = {
        model: scenario.model_figures(run.book["by_model"].get(model, {}), None, times["wall_s"])
        for _, model in (*TARGETS, JUDGE)
    }
    return {
        "benchmark": opts.name,
        "cases": opts.cases,
        "workers": opts.workers,
        "max_concurrency": opts.concurrency,
        "latency_s": opts.latency,
        "settings": opts.settings,
        **scenario.run_figures(run, times),
        "steady_calls_per_s": round(steady, 1) if steady is not None else None,
        # Little's law: with a fixed latency, the mean number of calls in flight over the middle of the run
        "steady_in_flight": round(steady * opts.latency) if steady is not None else None,
        "peak_in_flight_by_model": {model: f["peak_concurrency"] for model, f in per_model.items()},
        "per_model": per_model,
        "judge_calls": per_model[JUDGE[1]]["calls"],
    }


def measure(opts: Options) -> dict[str, Any]:
    with scenario.cluster(fake_config(opts), opts.workers, REDIS_DB, keep=opts.keep, settings=opts.settings) as c:
        timeout = opts.timeout or 300 + 0.05 * opts.calls + 2 * opts.latency
        counted = scenario.Poller(f"{c.fake}/_fake/ledger", LEDGER_EVERY_S, pick=lambda book: book["calls"])
        with httpx.Client(base_url=c.base, timeout=60) as client:
            run = scenario.run_job(c, client, prepare(client, opts, c.fake), timeout, watch=lambda _: [counted])
    return figures(opts, run, counted)


def _print_models(result: dict[str, Any]) -> None:
    header = f"{'model':<20} {'calls':>6} {'ok':>6} {'429':>5} {'wall rpm':>9} {'success span s':>15} {'peak conc':>10}"
    print(header)
    print("-" * len(header))
    for name, f in result["per_model"].items():
        print(
            f"{name:<20} {f['calls']:>6} {f['successes']:>6} {f['rate_limited']:>5} {f['wall_rpm']:>9.1f} "
            f"{f['success_span_s']:>15} {f['peak_concurrency']:>10}"
        )


def print_report(result: dict[str, Any], opts: Options) -> None:
    _print_models(result)
    scenario.print_job(result)
    print(
        f"{result['calls_per_s']} calls/s over the job's {result['wall_s']} s ({result['calls_including_judge']} "
        f"calls); steady {result['steady_calls_per_s']} calls/s over the middle half (so ~{result['steady_in_flight']}"
        f" in flight at {opts.latency} s latency); peak in flight at the fake {result['peak_in_flight']}"
    )
    print(
        f"429s: {result['http_429']}; duplicate successes {result['duplicate_successes']}, idempotent replays "
        f"{result['idempotent_replays']}; settings {result['settings'] or 'the defaults'}"
    )
    scenario.print_timeline(result)
    scenario.print_processes(result, opts.workers)
    scenario.print_warnings(warnings(result))


def warnings(result: dict[str, Any]) -> list[str]:
    found = scenario.common_warnings(result)
    if result["benchmark"] == "in_flight":
        if result["peak_in_flight"] < IN_FLIGHT_TARGET:
            found.append(f"peak in flight {result['peak_in_flight']}, below the target of {IN_FLIGHT_TARGET}")
        if (result["worker_peak_rss_mb"] or 0.0) >= RSS_TARGET_MB:
            found.append(f"the worker's peak RSS {result['worker_peak_rss_mb']} MB is over {RSS_TARGET_MB:.0f} MB")
    return found


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-flight", action="store_true", help="one worker, slow calls: how many in flight?")
    parser.add_argument("--cases", type=int, help="distinct cases (5,000; 2,000 with --in-flight)")
    parser.add_argument("--workers", type=int, help="`defeater worker` processes (3; 1 with --in-flight)")
    parser.add_argument(
        "--concurrency", type=int, help="max_concurrency of each config (1,000; 2,500 with --in-flight)"
    )
    parser.add_argument("--latency", type=float, help="fixed fake latency, seconds (1; 10 with --in-flight)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for api + workers")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job")
    args = parser.parse_args(argv)
    defaults = IN_FLIGHT_DEFAULTS if args.in_flight else CEILING_DEFAULTS
    given = {name: getattr(args, name) for name in defaults if getattr(args, name) is not None}
    chosen = defaults | given
    try:
        settings = (IN_FLIGHT_SETTINGS if args.in_flight else {}) | scenario.parse_settings(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        cases=int(chosen["cases"]),
        workers=int(chosen["workers"]),
        concurrency=int(chosen["concurrency"]),
        latency=float(chosen["latency"]),
        in_flight=args.in_flight,
        keep=args.keep,
        timeout=args.timeout,
        settings=settings,
    )


def main() -> None:
    harness.exit_on_sigterm()
    opts = parse_options()
    result = measure(opts)
    print_report(result, opts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
