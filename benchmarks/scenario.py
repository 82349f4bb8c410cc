"""What the distributed scenarios share: a running cluster (database, Redis, fake provider, api, workers), the REST
calls that set up a job (dataset, model configs, the job itself), running it while measuring the processes, the
job's timeline, pollers that time requests in a thread of their own, percentiles, and the common figures, lines
and warnings of a report.

Not a benchmark itself: ``fleet.py``, ``ceiling.py`` and ``study.py`` import it as ``scenario``.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import harness
import httpx

# the path each wire format's SDK appends its routes to, after the fake's base URL
BASE_PATHS = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "google": ""}
POLL_S = 1.0
PROGRESS_EVERY_S = 5.0
DONE_STATES = ("completed", "failed", "cancelled")


# ---- a running cluster -------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The started processes, their environment, the fake provider's URL and the API's."""

    group: harness.Children
    env: dict[str, str]
    fake: str
    base: str


@contextlib.contextmanager
def cluster(
    fake_config: dict[str, Any], workers: int, redis_db: int, keep: bool = False, settings: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """A fresh Postgres database and Redis db, the fake provider with ``fake_config``, ``defeater api`` and
    ``workers`` x ``defeater worker`` (with ``settings`` added to their environment), all idle and ready; everything
    is stopped, dropped and flushed on the way out (the database and the logs kept when ``keep``)."""
    with (
        harness.postgres_database(keep=keep) as database,
        harness.redis_db(redis_db) as redis,
        harness.children(keep_logs=keep) as group,
    ):
        env = harness.service_env(database, redis, **(settings or {}))
        harness.migrate(env)
        fake = harness.start_fake(group, fake_config, env)
        base = harness.start_api(group, env)
        started = harness.start_workers(group, env, workers)
        harness.wait_idle(group, ["api", *(w.name for w in started)])
        yield Cluster(group, env, fake, base)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs (``--set``) as environment entries; ValueError on a pair without ``=``."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set wants NAME=VALUE, not {pair!r}")
        out[name] = value
    return out


# ---- setting up a job over the REST API --------------------------------------------------------------------------


def config_body(name: str, provider: str, model: str, fake: str, limits: dict[str, int]) -> dict[str, Any]:
    """A model config calling ``model`` at the fake over ``provider``'s wire format."""
    return {
        "name": name,
        "provider": provider,
        "model": model,
        "base_url": fake + BASE_PATHS[provider],
        "api_key_env": "FAKE_PROVIDER_KEY",
        "limits": limits,
    }


def register(client: httpx.Client, body: dict[str, Any]) -> str:
    """``POST /v1/model-configs``; returns the config's id."""
    reply = client.post("/v1/model-configs", json=body)
    if reply.status_code not in (200, 201):
        raise RuntimeError(f"registering {body['name']}: {reply.status_code} {reply.text}")
    return str(reply.json()["id"])


def import_dataset(client: httpx.Client, name: str, jsonl: bytes) -> str:
    """``POST /v1/datasets`` of JSONL cases; returns the dataset's id."""
    reply = client.post(
        "/v1/datasets", params={"name": name}, content=jsonl, headers={"content-type": "application/x-ndjson"}
    )
    if reply.status_code != 201:
        raise RuntimeError(f"importing the dataset: {reply.status_code} {reply.text[:2000]}")
    return str(reply.json()["id"])


def create_job(client: httpx.Client, body: dict[str, Any]) -> str:
    """``POST /v1/jobs``; returns the job's id."""
    reply = client.post("/v1/jobs", json=body)
    if reply.status_code != 202:
        raise RuntimeError(f"creating the job: {reply.status_code} {reply.text[:2000]}")
    return str(reply.json()["id"])


# ---- running it --------------------------------------------------------------------------------------------------


def _progress_line(status: dict[str, Any], book: dict[str, Any], elapsed: float) -> str:
    req, jud = status["progress"]["requests"], status["progress"]["judgements"]
    return (
        f"[{elapsed:6.1f} s] {status['state']:<10} requests {req['succeeded']}/{req['total']} "
        f"(failed {req['failed']})  judgements {jud['succeeded']}/{jud['total']} (failed {jud['failed']})  "
        f"provider calls {book['calls']}, in flight {book.get('in_flight', '?')}, "
        f"429s {book['by_status'].get('429', 0)}"
    )


def wait_for_job(client: httpx.Client, group: harness.Children, fake: str, job_id: str, timeout: float) -> Any:
    """Poll the job until it ends (progress to stderr); RuntimeError on timeout or a dead child."""
    start = time.monotonic()
    last_line = 0.0
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        elapsed = time.monotonic() - start
        if status["state"] in DONE_STATES:
            return status
        if elapsed - last_line >= PROGRESS_EVERY_S:
            print(_progress_line(status, harness.fake_ledger(fake), elapsed), file=sys.stderr, flush=True)
            last_line = elapsed
        group.check_alive()
        if elapsed > timeout:
            raise RuntimeError(f"the job is not done after {timeout:.0f} s: {status['progress']}")
        time.sleep(POLL_S)


@dataclass
class JobRun:
    """One job run to its end, and what its processes used meanwhile (CPU from just before the job was posted)."""

    job_id: str
    status: dict[str, Any]
    book: dict[str, Any]
    started_at: float  # time.monotonic() just before the job was posted
    wall_s: float  # the client's: posting the job to seeing it ended
    cpu_s: dict[str, float]
    peak_rss_mb: dict[str, float]
    log_problems: dict[str, int]


def run_job(
    c: Cluster,
    client: httpx.Client,
    body: dict[str, Any],
    timeout: float,
    watch: Callable[[str], list[Poller]] | None = None,
) -> JobRun:
    """Post the job, wait for its end with the pollers ``watch(job_id)`` running, and measure the processes."""
    cpu0, start = harness.cpu_of(c.group), time.monotonic()
    job_id = create_job(client, body)
    with contextlib.ExitStack() as stack:
        for poller in watch(job_id) if watch else []:
            stack.enter_context(poller)
        status = wait_for_job(client, c.group, c.fake, job_id, timeout)
    wall = time.monotonic() - start
    cpu1 = harness.cpu_of(c.group)
    return JobRun(
        job_id=job_id,
        status=status,
        book=harness.fake_ledger(c.fake),
        started_at=start,
        wall_s=wall,
        cpu_s={name: cpu1[name] - cpu0.get(name, 0.0) for name in cpu1},
        peak_rss_mb=harness.peak_rss_mb(c.group),
        log_problems={child.name: len(child.problems()) for child in c.group.started},
    )


def timeline(status: dict[str, Any], book: dict[str, Any], models: list[str], client_wall_s: float) -> dict[str, float]:
    """The job's wall time (created to finished, the service's clock) and how it splits: before the first success
    of ``models`` (the targets), the span of their successes, and after the last."""
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


# ---- pollers, percentiles, rates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request of a poller."""

    at: float  # time.monotonic() when it was sent
    latency_s: float  # sent to the whole reply read
    status: int | None  # None: no reply (refused, reset, timed out)
    value: Any  # what the poller picked from the JSON reply, if asked to


class Poller:
    """GETs ``url`` every ``interval_s`` in a thread of its own while in its ``with`` block, one request at a time
    (a slow one delays the next, never overlaps it), recording each one's latency and ``pick`` of its JSON reply."""

    def __init__(
        self, url: str, interval_s: float, pick: Callable[[Any], Any] | None = None, timeout_s: float = 60.0
    ) -> None:
        self.url, self.interval_s, self.pick, self.timeout_s = url, interval_s, pick, timeout_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poll {url}", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            due = time.monotonic()
            while not self._stop.is_set():
                self.samples.append(self._get(client))
                due = max(due + self.interval_s, time.monotonic())
                self._stop.wait(max(0.0, due - time.monotonic()))

    def _get(self, client: httpx.Client) -> Sample:
        at = time.monotonic()
        try:
            reply = client.get(self.url)
        except httpx.HTTPError:
            return Sample(at, time.monotonic() - at, None, None)
        latency = time.monotonic() - at
        value = self.pick(reply.json()) if self.pick is not None and reply.status_code == 200 else None
        return Sample(at, latency, reply.status_code, value)


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of values sorted in ascending order."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency_figures(samples: list[Sample]) -> dict[str, Any]:
    """count, failed (no reply or not 200), and p50, p95, p99 and max latency in ms of the answered requests."""
    ordered = sorted(s.latency_s * 1000 for s in samples if s.status == 200)
    figures: dict[str, Any] = {"count": len(samples), "failed": len(samples) - len(ordered)}
    for name, p in (("p50_ms", 50.0), ("p95_ms", 95.0), ("p99_ms", 99.0), ("max_ms", 100.0)):
        figures[name] = round(percentile(ordered, p), 1) if ordered else None
    return figures


def _value_at(points: list[tuple[float, float]], at: float) -> float:
    """A counter's value at ``at``, interpolated linearly between the (time, value) points around it."""
    i = bisect.bisect_left(points, (at, -math.inf))
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    return v0 + (v1 - v0) * (at - t0) / (t1 - t0) if t1 > t0 else v1


def steady_rate(samples: list[Sample], start: float, middle: float = 0.5) -> float | None:
    """Per second, over the ``middle`` share of the run, of a growing count the samples picked: the run is from
    ``start`` (monotonic) to the first sample showing the final count. None with too few samples."""
    points = [(s.at, float(s.value)) for s in samples if s.value is not None]
    if len(points) < 3:
        return None
    end = next(at for at, value in points if value >= points[-1][1])
    margin = (end - start) * (1 - middle) / 2
    low, high = start + margin, end - margin
    if high - low <= 0:
        return None
    return (_value_at(points, high) - _value_at(points, low)) / (high - low)


# ---- figures, lines and warnings every scenario reports ----------------------------------------------------------


def model_figures(entry: dict[str, Any], rpm: int | None, wall_s: float, tpm: int | None = None) -> dict[str, Any]:
    """One model's figures from the fake's ledger: calls, 429s, the rate achieved, over its limit if it has one.
    With a TPM limit too, ``achieved_over_limit`` is the share of the limit that binds (the larger share)."""
    span = (entry.get("last_at") or 0.0) - (entry.get("first_at") or 0.0)
    successes, ledger_rpm = entry.get("successes", 0), entry.get("achieved_rpm") or 0.0
    figures = {
        "calls": entry.get("calls", 0),
        "successes": successes,
        "rate_limited": entry.get("rate_limited", 0),
        "429_per_1000_calls": round(1000 * entry.get("rate_limited", 0) / max(entry.get("calls", 0), 1), 2),
        "achieved_rpm": round(ledger_rpm, 1),
        # n successes span n - 1 gaps: the ledger's figure over-states the rate by one call in n
        "interval_rpm": round((successes - 1) / span * 60, 1) if span > 0 else None,
        "wall_rpm": round(successes / wall_s * 60, 1),
        "success_span_s": round(span, 2),
        "peak_concurrency": entry.get("peak_concurrency", 0),
    }
    if rpm:
        figures["achieved_over_limit"] = round(ledger_rpm / rpm, 4)
        figures["wall_over_limit"] = round(successes / wall_s * 60 / rpm, 4)
    if tpm:
        ledger_tpm = entry.get("achieved_tpm") or 0.0
        figures |= {"tokens": entry.get("tokens", 0), "achieved_tpm": round(ledger_tpm, 1)}
        figures["rpm_over_limit"] = figures.get("achieved_over_limit", 0.0)
        figures["tpm_over_limit"] = round(ledger_tpm / tpm, 4)
        figures["achieved_over_limit"] = max(figures["rpm_over_limit"], figures["tpm_over_limit"])
        # the fake's fullest 60 s window over the limit (1.0: a call was refused for want of room), and where 429s
        # came (seconds since the first admitted call: count)
        figures["peak_window_over_limit"] = round(entry.get("peak_window_tokens", 0) / tpm, 4)
        figures["429s_at_s"] = entry.get("rate_limited_per_s", {})
    return figures


def _per_call_ms(cpu_s: float, calls: int) -> float:
    return round(1000 * cpu_s / max(calls, 1), 2)


def run_figures(run: JobRun, times: dict[str, float]) -> dict[str, Any]:
    """The figures of every scenario: the job's end, wall time, call rate, 429s, in flight, CPU, memory, health."""
    calls, wall = run.book["calls"], times["wall_s"]
    rate_limited = run.book["by_status"].get("429", 0)
    workers = {k: v for k, v in run.cpu_s.items() if k.startswith("worker")}
    worker_rss = [v for k, v in run.peak_rss_mb.items() if k.startswith("worker")]
    return {
        "state": run.status["state"],
        "progress": run.status["progress"],
        "errors_by_kind": run.status["errors_by_kind"],
        "wall_s": round(wall, 2),
        "client_wall_s": round(run.wall_s, 2),
        "timeline_s": {k: round(v, 2) for k, v in times.items() if k != "wall_s"},
        "calls_including_judge": calls,
        "calls_per_s": round(calls / wall, 1) if wall > 0 else None,
        "http_429": rate_limited,
        "429_per_1000_calls": round(1000 * rate_limited / max(calls, 1), 2),
        "peak_in_flight": run.book["peak_concurrency"],
        "cpu_ms_per_call": _per_call_ms(sum(v for k, v in run.cpu_s.items() if k != "fake"), calls),
        "worker_cpu_ms_per_call": _per_call_ms(sum(workers.values()), calls),
        "fake_cpu_ms_per_call": _per_call_ms(run.cpu_s.get("fake", 0.0), calls),
        "cpu_s": {k: round(v, 2) for k, v in run.cpu_s.items()},
        "peak_rss_mb": run.peak_rss_mb,
        "worker_peak_rss_mb": max(worker_rss, default=None),
        "api_peak_rss_mb": run.peak_rss_mb.get("api"),
        "duplicate_successes": run.book["duplicate_successes"],
        "idempotent_replays": run.book["idempotent_replays"],
        "by_status": run.book["by_status"],
        "log_problem_lines": run.log_problems,
    }


def print_job(result: dict[str, Any]) -> None:
    """The job's end state and its progress by phase."""
    progress = result["progress"]
    print(
        f"job {result['state']}: requests {progress['requests']['succeeded']}/{progress['requests']['total']}, "
        f"judgements {progress['judgements']['succeeded']}/{progress['judgements']['total']}"
        f"{', errors ' + json.dumps(result['errors_by_kind']) if result['errors_by_kind'] else ''}"
    )


def print_timeline(result: dict[str, Any]) -> None:
    """How the job's wall time splits around the targets' successes."""
    if result["timeline_s"]:
        t = result["timeline_s"]
        print(
            f"wall = {t['to_first_success_s']} s to the first target success + {t['successes_span_s']} s of target "
            f"successes + {t['after_last_success_s']} s after the last (of which {t['last_call_to_finished_s']} s "
            "from the last provider call, judge included, to the job's finish)"
        )


def print_processes(result: dict[str, Any], workers: int) -> None:
    """CPU per call, and each process's CPU, peak memory and error lines."""
    print(
        f"CPU {result['cpu_ms_per_call']} ms per call (api + {workers} workers; workers alone "
        f"{result['worker_cpu_ms_per_call']} ms) over {result['calls_including_judge']} target and judge calls; "
        f"fake {result['fake_cpu_ms_per_call']} ms per call"
    )
    print(f"{'process':<10} {'CPU s':>7} {'peak RSS MB':>12} {'log problem lines':>18}")
    for name, cpu in result["cpu_s"].items():
        rss, problems = result["peak_rss_mb"].get(name, 0.0), result["log_problem_lines"].get(name, 0)
        print(f"{name:<10} {cpu:>7.2f} {rss:>12.1f} {problems:>18}")


def common_warnings(result: dict[str, Any]) -> list[str]:
    """What is wrong with any run: the job did not complete, 429s, a call answered twice, errors in the logs."""
    found = []
    if result["state"] != "completed":
        found.append(f"the job ended {result['state']}")
    if result["http_429"]:
        found.append(f"{result['http_429']} calls were rate limited")
    if result["duplicate_successes"]:
        found.append(f"{result['duplicate_successes']} duplicate successes")
    if any(result["log_problem_lines"].values()):
        found.append(f"error lines in the logs: {result['log_problem_lines']} (rerun with --keep to read them)")
    return found


def print_warnings(found: list[str]) -> None:
    for warning in found:
        print(f"WARNING: {warning}")
