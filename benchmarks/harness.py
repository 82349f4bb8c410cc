"""Process helpers for the distributed benchmarks: a throwaway Postgres database and Redis db, the fake provider,
``defeater api`` and ``defeater worker`` as child processes with their output in log files, and the CPU time and
peak memory of those processes read from /proc.

Not a benchmark itself: ``benchmarks/fleet.py`` (and later ones) import it as ``harness``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT.parent / "shared" / "data" / "blind-refusal" / "cases.jsonl"
BIN = ROOT / ".venv" / "bin"
ADMIN_DB = "postgres"
PG_HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# lines of a child's log that count as a problem worth a look
PROBLEM_MARKERS = ("Traceback", "ERROR", "CRITICAL")


def machine_speed_us() -> float:
    """Microseconds for a fixed piece of pure Python (best of 5): how fast this host runs our kind of code. Hosts
    differ: the ceiling's CPU per call was 2.63 ms in one session and 8.1 ms in a later one at the same commit, on a
    host where this read 2.0-2.1 us. Compare CPU figures from different runs through it."""
    import timeit

    return round(min(timeit.repeat("sum(range(100))", number=200_000, repeat=5)) / 200_000 * 1e6, 3)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], seconds: float, what: str, step: float = 0.2) -> None:
    """Call ``check`` until it returns True; RuntimeError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(step)


def study_cases(n: int) -> bytes:
    """n distinct cases as JSONL: the study's, repeated with new ids and a numbered query when more are asked for."""
    base = [json.loads(line) for line in STUDY.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        case = dict(base[i % len(base)])
        case["id"] = f"{case['id']}#{i}"
        case["user_query"] = f"{case['user_query']} ({i})"
        out.append(json.dumps(case))
    return "\n".join(out).encode()


def _psql(sql: str) -> None:
    command = ["psql", "-h", PG_HOST, "-U", "postgres", "-d", ADMIN_DB, "-v", "ON_ERROR_STOP=1", "-qc", sql]
    subprocess.run(command, check=True, capture_output=True, text=True)


@contextmanager
def postgres_database(prefix: str = "defeater_bench", keep: bool = False) -> Iterator[str]:
    """A new, empty Postgres database; yields its URL and drops it afterwards (unless ``keep``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG_HOST}/{name}"
    finally:
        if keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_db(db: int) -> Iterator[str]:
    """A Redis db emptied before and after use; yields its URL."""
    url = f"redis://127.0.0.1:6379/{db}"
    client = Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without any DEFEATER_ setting, plus a distributed deployment's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFEATER_")}
    env |= {
        "DEFEATER_DATABASE_URL": database_url,
        "DEFEATER_REDIS_URL": redis_url,
        "DEFEATER_PROVIDERS__ALLOWED_HOSTS": '["127.0.0.1"]',
        # the fake's key, to the fake on loopback alone (docs/security.md, "Provider keys")
        "DEFEATER_PROVIDERS__KEY_HOSTS": '{"FAKE_PROVIDER_KEY": ["127.0.0.1"]}',
        "FAKE_PROVIDER_KEY": "fake",
        # on loopback, for the measurement alone: a deployment keeps API tokens on
        "DEFEATER_AUTH__REQUIRED": "false",
    }
    return env | extra


def migrate(env: dict[str, str]) -> None:
    """``defeater db upgrade`` on the database named in ``env``."""
    subprocess.run([str(BIN / "defeater"), "db", "upgrade"], env=env, check=True, capture_output=True, text=True)


@dataclass
class Child:
    """A started process and the file its stdout and stderr go to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def problems(self) -> list[str]:
        """The lines of its log that look like errors."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if any(marker in line for marker in PROBLEM_MARKERS)]


@dataclass
class Children:
    """Child processes, each in its own session (Ctrl-C reaches only this script, which then stops them)."""

    logs: Path
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def named(self, prefix: str) -> list[Child]:
        return [c for c in self.started if c.name.startswith(prefix)]

    def check_alive(self) -> None:
        """RuntimeError when a child has exited."""
        for child in self.started:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.name} exited with {child.process.returncode}; see {child.log}")

    def stop_all(self, grace_s: float = 20.0) -> None:
        """SIGTERM every child still running, then SIGKILL what is left after ``grace_s``."""
        for child in self.started:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.started:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


@contextmanager
def children(keep_logs: bool = False) -> Iterator[Children]:
    """Children whose logs go to a temporary folder; all are stopped on the way out. The folder is kept when
    ``keep_logs`` or when the block fails, so that the logs can be read."""
    logs = Path(tempfile.mkdtemp(prefix="defeater-bench-"))
    group = Children(logs)
    failed = True
    try:
        yield group
        failed = False
    finally:
        group.stop_all()
        if keep_logs or failed:
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            for path in logs.iterdir():
                path.unlink()
            logs.rmdir()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_fake(group: Children, config: dict[str, Any], env: dict[str, str]) -> str:
    """The fake provider with ``config``; returns its base URL once its ledger answers."""
    port = free_port()
    path = group.logs / f"fake-{port}.json"
    path.write_text(json.dumps(config))
    argv = [str(BIN / "python"), "-m", "workers.providers.fake", "--port", str(port), "--config", str(path)]
    group.start("fake", argv, env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(f"{url}/_fake/ledger"), 30, "the fake provider answering")
    return url


def _ready(base: str) -> bool:
    try:
        checks = httpx.get(f"{base}/readyz", timeout=1).json().get("checks")
    except (httpx.HTTPError, ValueError):
        return False
    return bool(checks == {"database": "ok", "redis": "ok"})


def start_api(group: Children, env: dict[str, str]) -> str:
    """``defeater api`` on a free port; returns its base URL once /readyz reports the database and Redis ok."""
    port = free_port()
    group.start("api", [str(BIN / "defeater"), "api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base), 60, "the API becoming ready")
    return base


def start_workers(group: Children, env: dict[str, str], n: int) -> list[Child]:
    """n ``defeater worker`` processes."""
    return [group.start(f"worker-{i}", [str(BIN / "defeater"), "worker"], env) for i in range(n)]


def wait_idle(
    group: Children, names: list[str], seconds: float = 90.0, window_s: float = 1.0, busy_s: float = 0.1
) -> None:
    """Wait until each named child used under ``busy_s`` of CPU in ``window_s``: its start-up (imports, connections)
    is over, so that it is ready for work and its CPU counted from then on is work alone."""
    deadline = time.monotonic() + seconds
    watched = [c for c in group.started if c.name in names]
    before = {c.name: cpu_seconds(c.pid) for c in watched}
    while True:
        time.sleep(window_s)
        group.check_alive()
        now = {c.name: cpu_seconds(c.pid) for c in watched}
        if all(now[name] - before[name] < busy_s for name in now):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(names)} still busy starting after {seconds:.0f} s")
        before = now


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process and of its children it has waited for, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a live process, in kB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def cpu_of(group: Children) -> dict[str, float]:
    """CPU seconds of every live child, by name."""
    return {c.name: cpu_seconds(c.pid) for c in group.started if c.process.poll() is None}


def peak_rss_mb(group: Children) -> dict[str, float]:
    """Peak resident memory (VmHWM) of every live child, by name, in MB."""
    return {
        c.name: round(memory_kb(c.pid).get("VmHWM", 0) / 1024, 1) for c in group.started if c.process.poll() is None
    }


def fake_ledger(url: str) -> dict[str, Any]:
    """The fake provider's ledger (``GET /_fake/ledger``)."""
    book: dict[str, Any] = httpx.get(f"{url}/_fake/ledger", timeout=10).json()
    return book


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the ``finally`` blocks stop the children and drop the database."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
