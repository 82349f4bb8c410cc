"""At-the-limit run, distributed: can `defeater api` and W `defeater worker` processes on Postgres and Redis drive
several models at their RPM limit together, without 429s and without a call being answered twice?

Run: .venv/bin/python benchmarks/fleet.py [--rpm 600] [--tpm N] [--calls 600] [--models 2] [--workers 3]
                                          [--concurrency C] [--latency 0.5] [--no-judge] [--keep] [--timeout S]
                                          [--book FILE]
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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import httpx
import scenario

PROVIDERS = ("openai", "anthropic")
JUDGE_MODEL = "judge-g"
JUDGE_CONCURRENCY = 200
REDIS_DB = 6
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
    concurrency: int | None = None
    book: str | None = None

    @property
    def floor_s(self) -> float:
        return self.calls / self.rpm * 60

    def floor_with_tokens_s(self, tokens_per_call: float) -> float:
        """The floor when calls use this many tokens: whichever limit takes longer, the RPM or the TPM."""
        return max(self.floor_s, self.calls * tokens_per_call / self.tpm * 60 if self.tpm else 0.0)

    def targets(self) -> list[tuple[str, str]]:
        """(provider, model) of each target."""
        return [
            (PROVIDERS[i % len(PROVIDERS)], f"fleet-{PROVIDERS[i % len(PROVIDERS)]}-{i}") for i in range(self.models)
        ]

    def limits(self) -> dict[str, int]:
        return {"rpm": self.rpm} | ({"tpm": self.tpm} if self.tpm else {})

    def config_limits(self) -> dict[str, int]:
        """The targets' registered limits: the fake's, and the calls each worker may keep in flight if given."""
        return self.limits() | ({"max_concurrency": self.concurrency} if self.concurrency else {})


def fake_config(opts: Options) -> dict[str, Any]:
    return {
        "limits": {model: opts.limits() for _, model in opts.targets()},
        "latency": {"distribution": "uniform", "mean_s": opts.latency, "spread": 0.5},
    }


def prepare(client: httpx.Client, opts: Options, fake: str) -> dict[str, Any]:
    """Import the dataset and register the configs; returns the body of the job to create."""
    tag = uuid.uuid4().hex[:6]
    dataset = scenario.import_dataset(client, f"fleet-{tag}", harness.study_cases(opts.calls))
    targets = [
        scenario.register(client, scenario.config_body(f"fleet-{i}-{tag}", provider, model, fake, opts.config_limits()))
        for i, (provider, model) in enumerate(opts.targets())
    ]
    body: dict[str, Any] = {"dataset_id": dataset, "model_config_ids": targets}
    if opts.judge:
        # the judge model has no limit: let each worker keep up to 200 of its calls in flight, so that judging keeps
        # pace with two models at their limit (the default, 32 a worker, trails at 6,000 RPM)
        limits = {"max_concurrency": JUDGE_CONCURRENCY}
        judge = scenario.config_body(f"judge-{tag}", "google", JUDGE_MODEL, fake, limits)
        body["judge_config_ids"] = [scenario.register(client, judge)]
    return body


def figures(opts: Options, run: scenario.JobRun) -> dict[str, Any]:
    models = [model for _, model in opts.targets()]
    times = scenario.timeline(run.status, run.book, models, run.wall_s)
    common = scenario.run_figures(run, times)
    per_model = {
        model: scenario.model_figures(run.book["by_model"].get(model, {}), opts.rpm, times["wall_s"], opts.tpm)
        for model in models
    }
    tokens = max((run.book["by_model"].get(model, {}).get("tokens", 0) for model in models), default=0)
    floor_s = opts.floor_with_tokens_s(tokens / opts.calls)
    return {
        "benchmark": "fleet_distributed",
        "rpm_limit": opts.rpm,
        "tpm_limit": opts.tpm,
        "models": opts.models,
        "calls_per_model": opts.calls,
        "workers": opts.workers,
        "latency_s": opts.latency,
        "judge": opts.judge,
        **common,
        "per_model": per_model,
        "achieved_over_limit": min(v["achieved_over_limit"] for v in per_model.values()),
        "wall_over_limit": min(v["wall_over_limit"] for v in per_model.values()),
        "floor_s": round(floor_s, 2),
        "floor_bound_by": "tpm" if floor_s > opts.floor_s else "rpm",
        "wall_over_floor": round(times["wall_s"] / floor_s, 3),
        "judge_calls": run.book["by_model"].get(JUDGE_MODEL, {}).get("calls", 0),
    }


def measure(opts: Options) -> dict[str, Any]:
    with scenario.cluster(fake_config(opts), opts.workers, REDIS_DB, keep=opts.keep) as c:
        # under a TPM limit the floor is not known before the calls' tokens are: allow ~400 tokens a call
        timeout = opts.timeout or 3 * opts.floor_with_tokens_s(400) + 120
        with httpx.Client(base_url=c.base, timeout=60) as client:
            run = scenario.run_job(c, client, prepare(client, opts, c.fake), timeout)
    if opts.book:
        # the fake's whole ledger: per model, tokens admitted and 429s per second, the fullest TPM window
        Path(opts.book).write_text(json.dumps(run.book))
    return figures(opts, run)


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
    scenario.print_job(result)
    print(
        f"429s: {result['http_429']} ({result['429_per_1000_calls']} per 1,000 calls); wall {result['wall_s']} s vs "
        f"floor {result['floor_s']} s ({result['wall_over_floor']}x); duplicate successes "
        f"{result['duplicate_successes']}, idempotent replays {result['idempotent_replays']}"
    )
    scenario.print_timeline(result)
    scenario.print_processes(result, opts.workers)
    scenario.print_warnings(warnings(result))


def warnings(result: dict[str, Any]) -> list[str]:
    found = scenario.common_warnings(result)
    if result["achieved_over_limit"] < RATE_WARNING:
        found.append(f"a model reached only {result['achieved_over_limit']:.1%} of its limit")
    return found


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=600, help="the limit per target model, requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="a tokens-per-minute limit too")
    parser.add_argument("--calls", type=int, default=600, help="calls per target model (distinct cases)")
    parser.add_argument("--models", type=int, default=2, help="target models (OpenAI and Anthropic in turn)")
    parser.add_argument("--workers", type=int, default=3, help="`defeater worker` processes")
    parser.add_argument("--latency", type=float, default=0.5, help="mean fake latency, seconds")
    parser.add_argument("--concurrency", type=int, default=None, help="the targets' max_concurrency (per worker)")
    parser.add_argument("--no-judge", action="store_true", help="register no judge (see above)")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job (3x floor + 120)")
    parser.add_argument("--book", default=None, help="write the fake's ledger (per-second figures) to this file")
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
        concurrency=args.concurrency,
        book=args.book,
    )


def main() -> None:
    harness.exit_on_sigterm()
    opts = parse_options()
    result = measure(opts)
    print_report(result, opts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
