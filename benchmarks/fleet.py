"""At-the-limit run, distributed: can `defeater api` and W `defeater worker` processes on Postgres and Redis drive
several models at their RPM limit together, without 429s and without a call being answered twice?

Run: .venv/bin/python benchmarks/fleet.py [--rpm 600] [--tpm N] [--calls 600] [--models 2] [--workers 3]
                                          [--latency 0.5] [--no-judge] [--keep] [--timeout S]
Everything runs as child processes of this script: a fresh Postgres database (dropped afterwards) and Redis db 6
(flushed before and after), the fake provider (each target model limited to RPM, and TPM if given; the judge
unlimited), `defeater api` and the workers. Through the REST API it imports CALLS distinct cases, registers MODELS
target configs (OpenAI and Anthropic wire formats in turn, with the same limits as the fake's) and a Gemini-format
judge, creates the job and waits for it, printing progress to stderr. With --no-judge no judge is registered: the
job gets the service's default judge, which the loopback-only host list refuses, so its judgements fail at once
without a provider call.

Prints, per target model and overall: achieved rate / limit (the fake's rate over first to last success, and
successes over the job's wall time), 429s per 1,000 calls, wall time vs the floor (calls / RPM), CPU ms per provider
call of the api and workers together (the fake's separately), peak RSS per process, and the fake's duplicate
successes (must be 0). One JSON line of figures closes the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import harness
import httpx

PROVIDERS = ("openai", "anthropic")
BASE_PATHS = {"openai": "/v1", "anthropic": "", "google": ""}
JUDGE_MODEL = "judge-g"
REDIS_DB = 6
POLL_S = 1.0
PROGRESS_EVERY_S = 5.0
RATE_WARNING = 0.95


@dataclass(frozen=True)
class Options:
    rpm: int
    tpm: int | None
    calls: int
    models: int
    workers: int
    latency: float
    judge: bool
    keep: bool
    timeout: float | None

    @property
    def floor_s(self) -> float:
        return self.calls / self.rpm * 60

    def targets(self) -> list[tuple[str, str]]:
        """(provider, model) of each target."""
        return [
            (PROVIDERS[i % len(PROVIDERS)], f"fleet-{PROVIDERS[i % len(PROVIDERS)]}-{i}") for i in range(self.models)
        ]

    def limits(self) -> dict[str, int]:
        return {"rpm": self.rpm} | ({"tpm": self.tpm} if self.tpm else {})


def fake_config(opts: Options) -> dict[str, Any]:
    return {
        "limits": {model: opts.limits() for _, model in opts.targets()},
        "latency": {"distribution": "uniform", "mean_s": opts.latency, "spread": 0.5},
    }


def _register(client: httpx.Client, body: dict[str, Any]) -> str:
    reply = client.post("/v1/model-configs", json=body)
    if reply.status_code not in (200, 201):
        raise RuntimeError(f"registering {body['name']}: {reply.status_code} {reply.text}")
    return str(reply.json()["id"])


def _config_body(name: str, provider: str, model: str, fake: str, limits: dict[str, int]) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "model": model,
        "base_url": fake + BASE_PATHS[provider],
        "api_key_env": "FAKE_PROVIDER_KEY",
        "limits": limits,
    }


def prepare(client: httpx.Client, opts: Options, fake: str) -> dict[str, Any]:
    """Import the dataset and register the configs; returns the body of the job to create."""
    tag = uuid.uuid4().hex[:6]
    reply = client.post(
        "/v1/datasets",
        params={"name": f"fleet-{tag}"},
        content=harness.study_cases(opts.calls),
        headers={"content-type": "application/x-ndjson"},
    )
    if reply.status_code != 201:
        raise RuntimeError(f"importing the dataset: {reply.status_code} {reply.text[:2000]}")
    targets = [
        _register(client, _config_body(f"fleet-{i}-{tag}", provider, model, fake, opts.limits()))
        for i, (provider, model) in enumerate(opts.targets())
    ]
    body: dict[str, Any] = {"dataset_id": reply.json()["id"], "model_config_ids": targets}
    if opts.judge:
        body["judge_config_ids"] = [_register(client, _config_body(f"judge-{tag}", "google", JUDGE_MODEL, fake, {}))]
    return body


def _progress_line(status: dict[str, Any], book: dict[str, Any], elapsed: float) -> str:
    req, jud = status["progress"]["requests"], status["progress"]["judgements"]
    return (
        f"[{elapsed:6.1f} s] {status['state']:<10} requests {req['succeeded']}/{req['total']} "
        f"(failed {req['failed']})  judgements {jud['succeeded']}/{jud['total']} (failed {jud['failed']})  "
        f"provider calls {book['calls']}, 429s {book['by_status'].get('429', 0)}"
    )


def wait_for_job(client: httpx.Client, group: harness.Children, fake: str, job_id: str, timeout: float) -> Any:
    """Poll the job until it is completed (progress to stderr); RuntimeError on timeout or a dead child."""
    start = time.monotonic()
    last_line = 0.0
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        elapsed = time.monotonic() - start
        if status["state"] in ("completed", "failed", "cancelled"):
            return status
        if elapsed - last_line >= PROGRESS_EVERY_S:
            print(_progress_line(status, harness.fake_ledger(fake), elapsed), file=sys.stderr, flush=True)
            last_line = elapsed
        group.check_alive()
        if elapsed > timeout:
            raise RuntimeError(f"the job is not done after {timeout:.0f} s: {status['progress']}")
        time.sleep(POLL_S)


def _timeline(
    status: dict[str, Any], book: dict[str, Any], models: list[str], client_wall_s: float
) -> dict[str, float]:
    """The job's wall time (created to finished, the service's clock) and how it splits: before the first target
    success, the span of target successes, and after the last."""
    if not status.get("finished_at"):
        return {"wall_s": client_wall_s}
    created = datetime.fromisoformat(status["created_at"]).timestamp()
    finished = datetime.fromisoformat(status["finished_at"]).timestamp()
    entries = [book["by_model"][m] for m in models if book["by_model"].get(m, {}).get("first_at")]
    if not entries:
        return {"wall_s": finished - created}
    first, last = min(e["first_at"] for e in entries), max(e["last_at"] for e in entries)
    last_call = max(e["last_at"] or 0.0 for e in book["by_model"].values())  # the judge's included
    return {
        "wall_s": finished - created,
        "to_first_success_s": first - created,
        "successes_span_s": last - first,
        "after_last_success_s": finished - last,
        "last_call_to_finished_s": finished - last_call,
    }


def _model_figures(entry: dict[str, Any], opts: Options, wall_s: float) -> dict[str, Any]:
    span = (entry["last_at"] or 0.0) - (entry["first_at"] or 0.0)
    ledger_rpm = entry["achieved_rpm"] or 0.0
    return {
        "calls": entry["calls"],
        "successes": entry["successes"],
        "rate_limited": entry["rate_limited"],
        "429_per_1000_calls": round(1000 * entry["rate_limited"] / max(entry["calls"], 1), 2),
        "achieved_rpm": round(ledger_rpm, 1),
        "achieved_over_limit": round(ledger_rpm / opts.rpm, 4),
        # n successes span n - 1 gaps: the ledger's figure over-states the rate by one call in n
        "interval_rpm": round((entry["successes"] - 1) / span * 60, 1) if span > 0 else None,
        "wall_rpm": round(entry["successes"] / wall_s * 60, 1),
        "wall_over_limit": round(entry["successes"] / wall_s * 60 / opts.rpm, 4),
        "success_span_s": round(span, 2),
        "peak_concurrency": entry["peak_concurrency"],
    }


@dataclass
class Measured:
    status: dict[str, Any]
    book: dict[str, Any]
    wall_s: float
    cpu_s: dict[str, float]
    peak_rss_mb: dict[str, float]
    log_problems: dict[str, int]


def figures(opts: Options, m: Measured) -> dict[str, Any]:
    models = [model for _, model in opts.targets()]
    timeline = _timeline(m.status, m.book, models, m.wall_s)
    job_wall = timeline["wall_s"]
    empty = {"calls": 0, "successes": 0, "rate_limited": 0, "first_at": None, "last_at": None, "achieved_rpm": None,
             "peak_concurrency": 0}  # fmt: skip
    per_model = {
        model: _model_figures(m.book["by_model"].get(model, empty), opts, job_wall) for _, model in opts.targets()
    }
    total_calls = m.book["calls"]
    ours = sum(v for k, v in m.cpu_s.items() if k != "fake")
    rate_limited = m.book["by_status"].get("429", 0)
    return {
        "benchmark": "fleet_distributed",
        "rpm_limit": opts.rpm,
        "tpm_limit": opts.tpm,
        "models": opts.models,
        "calls_per_model": opts.calls,
        "workers": opts.workers,
        "latency_s": opts.latency,
        "judge": opts.judge,
        "state": m.status["state"],
        "progress": m.status["progress"],
        "errors_by_kind": m.status["errors_by_kind"],
        "per_model": per_model,
        "achieved_over_limit": min(v["achieved_over_limit"] for v in per_model.values()),
        "wall_over_limit": min(v["wall_over_limit"] for v in per_model.values()),
        "http_429": rate_limited,
        "429_per_1000_calls": round(1000 * rate_limited / max(total_calls, 1), 2),
        "wall_s": round(job_wall, 2),
        "client_wall_s": round(m.wall_s, 2),
        "timeline_s": {k: round(v, 2) for k, v in timeline.items() if k != "wall_s"},
        "floor_s": round(opts.floor_s, 2),
        "wall_over_floor": round(job_wall / opts.floor_s, 3),
        "calls_including_judge": total_calls,
        "judge_calls": m.book["by_model"].get(JUDGE_MODEL, {}).get("calls", 0),
        "cpu_ms_per_call": round(1000 * ours / max(total_calls, 1), 2),
        "fake_cpu_ms_per_call": round(1000 * m.cpu_s.get("fake", 0.0) / max(total_calls, 1), 2),
        "cpu_s": {k: round(v, 2) for k, v in m.cpu_s.items()},
        "peak_rss_mb": m.peak_rss_mb,
        "duplicate_successes": m.book["duplicate_successes"],
        "idempotent_replays": m.book["idempotent_replays"],
        "by_status": m.book["by_status"],
        "log_problem_lines": m.log_problems,
    }


def measure(opts: Options) -> dict[str, Any]:
    with (
        harness.postgres_database(keep=opts.keep) as database,
        harness.redis_db(REDIS_DB) as redis,
        harness.children(keep_logs=opts.keep) as group,
    ):
        env = harness.service_env(database, redis)
        harness.migrate(env)
        fake = harness.start_fake(group, fake_config(opts), env)
        base = harness.start_api(group, env)
        workers = harness.start_workers(group, env, opts.workers)
        harness.wait_idle(group, ["api", *(w.name for w in workers)])
        timeout = opts.timeout or 3 * opts.floor_s + 120
        with httpx.Client(base_url=base, timeout=60) as client:
            body = prepare(client, opts, fake)
            cpu0, start = harness.cpu_of(group), time.monotonic()
            reply = client.post("/v1/jobs", json=body)
            if reply.status_code != 202:
                raise RuntimeError(f"creating the job: {reply.status_code} {reply.text[:2000]}")
            status = wait_for_job(client, group, fake, str(reply.json()["id"]), timeout)
            wall = time.monotonic() - start
            cpu1 = harness.cpu_of(group)
        measured = Measured(
            status=status,
            book=harness.fake_ledger(fake),
            wall_s=wall,
            cpu_s={name: cpu1[name] - cpu0.get(name, 0.0) for name in cpu1},
            peak_rss_mb=harness.peak_rss_mb(group),
            log_problems={c.name: len(c.problems()) for c in group.started},
        )
    return figures(opts, measured)


def _print_models(result: dict[str, Any], opts: Options) -> None:
    header = (
        f"{'model':<20} {'calls':>6} {'ok':>6} {'429':>5} {'429/1k':>7} {'ledger rpm':>11} {'/limit':>7} "
        f"{'wall rpm':>9} {'/limit':>7} {'peak conc':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, f in result["per_model"].items():
        print(
            f"{name:<20} {f['calls']:>6} {f['successes']:>6} {f['rate_limited']:>5} {f['429_per_1000_calls']:>7} "
            f"{f['achieved_rpm']:>11.1f} {f['achieved_over_limit']:>7.3f} {f['wall_rpm']:>9.1f} "
            f"{f['wall_over_limit']:>7.3f} {f['peak_concurrency']:>10}"
        )
    print(f"{'(limit ' + str(opts.rpm) + ' rpm per model)':<20}")


def print_report(result: dict[str, Any], opts: Options) -> None:
    _print_models(result, opts)
    progress = result["progress"]
    print(
        f"job {result['state']}: requests {progress['requests']['succeeded']}/{progress['requests']['total']}, "
        f"judgements {progress['judgements']['succeeded']}/{progress['judgements']['total']}"
        f"{', errors ' + json.dumps(result['errors_by_kind']) if result['errors_by_kind'] else ''}"
    )
    print(
        f"429s: {result['http_429']} ({result['429_per_1000_calls']} per 1,000 calls); wall {result['wall_s']} s vs "
        f"floor {result['floor_s']} s ({result['wall_over_floor']}x); duplicate successes "
        f"{result['duplicate_successes']}, idempotent replays {result['idempotent_replays']}"
    )
    if result["timeline_s"]:
        t = result["timeline_s"]
        print(
            f"wall = {t['to_first_success_s']} s to the first target success + {t['successes_span_s']} s of target "
            f"successes + {t['after_last_success_s']} s after the last (of which {t['last_call_to_finished_s']} s "
            "from the last provider call, judge included, to the job's finish)"
        )
    print(
        f"CPU {result['cpu_ms_per_call']} ms per call (api + {opts.workers} workers) over "
        f"{result['calls_including_judge']} target and judge calls; fake {result['fake_cpu_ms_per_call']} ms per call"
    )
    print(f"{'process':<10} {'CPU s':>7} {'peak RSS MB':>12} {'log problem lines':>18}")
    for name, cpu in result["cpu_s"].items():
        rss, problems = result["peak_rss_mb"].get(name, 0.0), result["log_problem_lines"].get(name, 0)
        print(f"{name:<10} {cpu:>7.2f} {rss:>12.1f} {problems:>18}")
    for warning in warnings(result):
        print(f"WARNING: {warning}")


def warnings(result: dict[str, Any]) -> list[str]:
    found = []
    if result["state"] != "completed":
        found.append(f"the job ended {result['state']}")
    if result["http_429"]:
        found.append(f"{result['http_429']} calls were rate limited")
    if result["achieved_over_limit"] < RATE_WARNING:
        found.append(f"a model reached only {result['achieved_over_limit']:.1%} of its limit")
    if result["duplicate_successes"]:
        found.append(f"{result['duplicate_successes']} duplicate successes")
    if any(result["log_problem_lines"].values()):
        found.append(f"error lines in the logs: {result['log_problem_lines']} (rerun with --keep to read them)")
    return found


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=600, help="the limit per target model, requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="a tokens-per-minute limit too")
    parser.add_argument("--calls", type=int, default=600, help="calls per target model (distinct cases)")
    parser.add_argument("--models", type=int, default=2, help="target models (OpenAI and Anthropic in turn)")
    parser.add_argument("--workers", type=int, default=3, help="`defeater worker` processes")
    parser.add_argument("--latency", type=float, default=0.5, help="mean fake latency, seconds")
    parser.add_argument("--no-judge", action="store_true", help="register no judge (see above)")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job (3x floor + 120)")
    args = parser.parse_args(argv)
    return Options(
        rpm=args.rpm,
        tpm=args.tpm,
        calls=args.calls,
        models=args.models,
        workers=args.workers,
        latency=args.latency,
        judge=not args.no_judge,
        keep=args.keep,
        timeout=args.timeout,
    )


def main() -> None:
    harness.exit_on_sigterm()
    opts = parse_options()
    result = measure(opts)
    print_report(result, opts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
