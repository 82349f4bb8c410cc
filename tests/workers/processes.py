"""Helpers for tests that run the fake provider and ``defeater`` as processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROVIDER_ENV

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_process(tmp_path: Path) -> Iterator[Any]:
    """Start a fake provider in its own process; yields a function that starts one with a config."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any], *args: str) -> str:
        port = free_port()
        path = tmp_path / f"fake-{port}.json"
        path.write_text(json.dumps(config))
        command = [str(BIN / "python"), "-m", "workers.providers.fake", "--port", str(port), "--config", str(path)]
        started.append(subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/_fake/ledger", timeout=1).raise_for_status()
                return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the fake provider did not start")

    yield start
    for process in started:
        process.kill()
        process.wait()


def ledger(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/_fake/ledger", timeout=5).json()
    return result


@pytest.fixture
def run_env(env_without_defeater: dict[str, str]) -> dict[str, str]:
    return env_without_defeater | {
        "OPENAI_API_KEY": "fake-key",
        "ANTHROPIC_API_KEY": "fake-key",
        "GEMINI_API_KEY": "fake-key",
        **PROVIDER_ENV,
    }


def start_run(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``defeater run`` and read its first line for the job id."""
    process = subprocess.Popen(
        [str(BIN / "defeater"), "run", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("job "), first + (process.stderr.read() if process.stderr else "")
    return process, first.split()[1].rstrip(":")


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL a process started by ``start_run`` and close its pipes."""
    process.kill()
    process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def wait_ready(base: str, seconds: float = 30) -> None:
    """Wait until the API at ``base`` answers ``/readyz`` with 200 (its database, and Redis if set, reachable)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not become ready"
        time.sleep(0.1)


def stop(processes: list[subprocess.Popen[Any]], grace_s: float = 30) -> None:
    """SIGTERM every process, give each ``grace_s`` to finish cleanly, then SIGKILL what is left."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
