"""The study at scale, distributed: the full Blind Refusal dataset x the study's 6 recorded models, replayed by the
fake provider, judged by the replay judge, on `defeater api` and W `defeater worker` processes, every model held to
an RPM limit. How close to the rate-limit floor does it finish, what does each call cost, and how fast does the API
answer while it runs?

Run: .venv/bin/python benchmarks/study.py [--rpm 600] [--judge-rpm 6000] [--workers 3] [--latency 0.5]
                                          [--concurrency 100] [--limit N] [--set NAME=VALUE ...] [--keep] [--timeout S]
Everything runs as child processes of this script: a fresh Postgres database (dropped afterwards) and Redis db 10
(flushed before and after), the fake provider replaying ../shared/data/blind-refusal (each recorded model limited
to RPM, the replay judge to JUDGE_RPM, a uniform latency around LATENCY), `defeater api` and the workers. Through
the REST API it imports the study's cases, registers the 6 models over the wire format each is replayed over and
the replay judge, each with the same RPM limit as the fake's and `max_concurrency` CONCURRENCY, creates the job
(--limit N: a stable subset of N cases, through the job's filters) and waits for it, printing progress to stderr.
Meanwhile a sampler GETs /v1/jobs/{id} every 0.2 s and /v1/jobs/{id}/results every 2 s, one request at a time each.

Prints, per model: calls, 429s and the rate achieved over the limit; then the job's wall time (created to finished)
against the rate-limit floor (the largest of each model's calls / RPM and the judge's calls / JUDGE_RPM, naming
which bounds), CPU ms per call of the api and workers (the fake's apart), peak RSS per process, the fake's duplicate
successes (must be 0), and the latency of the sampled API requests: count, p50, p95, p99, max. One JSON line of
figures closes the output.
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

from workers.providers.fake.replay import REPLAY_WIRES

WIRES = REPLAY_WIRES  # each recorded model's slug -> the wire format it is replayed over
JUDGE = ("openai", "replay-judge")
REPLAY_DIR = harness.STUDY.parent
REDIS_DB = 10
JOB_EVERY_S = 0.2
RESULTS_EVERY_S = 2.0
# the brief's targets for the API while the study runs, p99 in ms
JOB_P99_TARGET_MS = 50.0
RESULTS_P99_TARGET_MS = 300.0


@dataclass(frozen=True)
class Options:
    rpm: int
    judge_rpm: int
    workers: int
    latency: float
    concurrency: int
    limit: int | None
    keep: bool
    timeout: float | None
    settings: dict[str, str] = field(default_factory=dict)

    def fake_config(self) -> dict[str, Any]:
        limits = {slug: {"rpm": self.rpm} for slug in WIRES} | {JUDGE[1]: {"rpm": self.judge_rpm}}
        latency = {"distribution": "uniform", "mean_s": self.latency, "spread": 0.5}
        return {"mode": "replay", "replay_dir": str(REPLAY_DIR), "limits": limits, "latency": latency}

    def rough_floor_s(self) -> float:
        """The floor before the run, from the cases alone (every answer judged): for the default timeout."""
        cases = self.limit or len(harness.STUDY.read_text().splitlines())
        return max(cases / self.rpm, cases * len(WIRES) / self.judge_rpm) * 60


def prepare(client: httpx.Client, opts: Options, fake: str) -> dict[str, Any]:
    """Import the study's cases and register the configs; returns the body of the job to create."""
    tag = uuid.uuid4().hex[:6]
    dataset = scenario.import_dataset(client, f"study-{tag}", harness.STUDY.read_bytes())
    limits = {"rpm": opts.rpm, "max_concurrency": opts.concurrency}
    targets = [
        scenario.register(client, scenario.config_body(f"{wire}:{slug}@fake-{tag}", wire, slug, fake, limits))
        for slug, wire in WIRES.items()
    ]
    judge_limits = {"rpm": opts.judge_rpm, "max_concurrency": opts.concurrency}
    judge = scenario.register(client, scenario.config_body(f"replay-judge-{tag}", *JUDGE, fake, judge_limits))
    body: dict[str, Any] = {"dataset_id": dataset, "model_config_ids": targets, "judge_config_ids": [judge]}
    if opts.limit:
        body["filters"] = {"limit": opts.limit}
    return body


def floor(status: dict[str, Any], opts: Options) -> tuple[float, str]:
    """The rate-limit floor of the job that ran, in seconds, and what sets it: each model's calls (one per case)
    at RPM, and the judge's (one per judgement) at JUDGE_RPM, all at once."""
    targets_s = status["case_count"] * status["samples_per_case"] / opts.rpm * 60
    judge_s = status["progress"]["judgements"]["total"] / opts.judge_rpm * 60
    if judge_s > targets_s:
        return judge_s, f"the judge ({status['progress']['judgements']['total']} calls at {opts.judge_rpm} rpm)"
    return targets_s, f"each model ({status['case_count']} calls at {opts.rpm} rpm)"


@dataclass
class Sampled:
    """The API requests timed while the job ran."""

    job: scenario.Poller | None = None
    results: scenario.Poller | None = None

    def start(self, base: str, job_id: str) -> list[scenario.Poller]:
        self.job = scenario.Poller(f"{base}/v1/jobs/{job_id}", JOB_EVERY_S)
        self.results = scenario.Poller(f"{base}/v1/jobs/{job_id}/results", RESULTS_EVERY_S)
        return [self.job, self.results]


def figures(opts: Options, run: scenario.JobRun, sampled: Sampled) -> dict[str, Any]:
    times = scenario.timeline(run.status, run.book, list(WIRES), run.wall_s)
    floor_s, bound_by = floor(run.status, opts)
    models = dict.fromkeys(WIRES, opts.rpm) | {JUDGE[1]: opts.judge_rpm}
    per_model = {
        model: scenario.model_figures(run.book["by_model"].get(model, {}), rpm, times["wall_s"])
        for model, rpm in models.items()
    }
    assert sampled.job is not None and sampled.results is not None
    return {
        "benchmark": "study",
        "cases": run.status["case_count"],
        "rpm_limit": opts.rpm,
        "judge_rpm_limit": opts.judge_rpm,
        "workers": opts.workers,
        "latency_s": opts.latency,
        "max_concurrency": opts.concurrency,
        "settings": opts.settings,
        **scenario.run_figures(run, times),
        "floor_s": round(floor_s, 2),
        "floor_bound_by": bound_by,
        "wall_over_floor": round(times["wall_s"] / floor_s, 3),
        "judge_calls": per_model[JUDGE[1]]["calls"],
        "per_model": per_model,
        **{f"get_job_{k}": v for k, v in scenario.latency_figures(sampled.job.samples).items()},
        **{f"get_results_{k}": v for k, v in scenario.latency_figures(sampled.results.samples).items()},
    }


def measure(opts: Options) -> dict[str, Any]:
    with scenario.cluster(opts.fake_config(), opts.workers, REDIS_DB, keep=opts.keep, settings=opts.settings) as c:
        timeout = opts.timeout or 3 * opts.rough_floor_s() + 180
        sampled = Sampled()
        with httpx.Client(base_url=c.base, timeout=60) as client:
            body = prepare(client, opts, c.fake)
            run = scenario.run_job(c, client, body, timeout, watch=lambda job_id: sampled.start(c.base, job_id))
    return figures(opts, run, sampled)


def _print_models(result: dict[str, Any]) -> None:
    header = (
        f"{'model':<20} {'limit':>6} {'calls':>6} {'ok':>6} {'429':>5} {'ledger rpm':>11} {'/limit':>7} "
        f"{'wall rpm':>9} {'/limit':>7} {'peak conc':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, f in result["per_model"].items():
        limit = result["judge_rpm_limit"] if name == JUDGE[1] else result["rpm_limit"]
        print(
            f"{name:<20} {limit:>6} {f['calls']:>6} {f['successes']:>6} {f['rate_limited']:>5} "
            f"{f['achieved_rpm']:>11.1f} {f['achieved_over_limit']:>7.3f} {f['wall_rpm']:>9.1f} "
            f"{f['wall_over_limit']:>7.3f} {f['peak_concurrency']:>10}"
        )


def _print_latency(result: dict[str, Any]) -> None:
    print(
        f"{'API while it ran':<28} {'count':>6} {'failed':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for label, prefix in (("GET /v1/jobs/{id}", "get_job_"), ("GET /v1/jobs/{id}/results", "get_results_")):
        f = {k.removeprefix(prefix): v for k, v in result.items() if k.startswith(prefix)}
        cells = " ".join(f"{'-' if f[k] is None else f[k]:>8}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
        print(f"{label:<28} {f['count']:>6} {f['failed']:>7} {cells}")


def print_report(result: dict[str, Any], opts: Options) -> None:
    _print_models(result)
    scenario.print_job(result)
    print(
        f"wall {result['wall_s']} s vs floor {result['floor_s']} s ({result['wall_over_floor']}x; bound by "
        f"{result['floor_bound_by']}); {result['calls_per_s']} calls/s; 429s: {result['http_429']} "
        f"({result['429_per_1000_calls']} per 1,000 calls); duplicate successes {result['duplicate_successes']}, "
        f"idempotent replays {result['idempotent_replays']}"
    )
    scenario.print_timeline(result)
    scenario.print_processes(result, opts.workers)
    _print_latency(result)
    scenario.print_warnings(warnings(result))


def warnings(result: dict[str, Any]) -> list[str]:
    found = scenario.common_warnings(result)
    for prefix, label, target in (
        ("get_job_", "GET job", JOB_P99_TARGET_MS),
        ("get_results_", "GET results", RESULTS_P99_TARGET_MS),
    ):
        failed, count, p99 = (result[prefix + k] for k in ("failed", "count", "p99_ms"))
        if failed:
            found.append(f"{failed} of {count} sampled {label} requests failed")
        if p99 is not None and p99 > target:
            found.append(f"{label} p99 {p99} ms, over the target of {target:.0f} ms")
    return found


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=600, help="the limit of each recorded model, requests per minute")
    parser.add_argument("--judge-rpm", type=int, default=6000, help="the replay judge's limit, requests per minute")
    parser.add_argument("--workers", type=int, default=3, help="`defeater worker` processes")
    parser.add_argument("--latency", type=float, default=0.5, help="mean fake latency, seconds (uniform, ±50%%)")
    parser.add_argument("--concurrency", type=int, default=100, help="max_concurrency of each config")
    parser.add_argument("--limit", type=int, default=None, help="a stable subset of this many cases (all 1,290)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for api + workers")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job (3x floor + 180)")
    args = parser.parse_args(argv)
    try:
        settings = scenario.parse_settings(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        rpm=args.rpm,
        judge_rpm=args.judge_rpm,
        workers=args.workers,
        latency=args.latency,
        concurrency=args.concurrency,
        limit=args.limit,
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
