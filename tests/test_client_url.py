"""Where the client commands send their requests: ``DEFEATER_URL``, never a guessed address; with or without ``/v1``."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import ServiceClient
from service.exit_codes import ExitCode
from service.settings import Settings
from tests.test_cli import run
from tests.workers.processes import BIN, free_port, run_env, wait_ready  # noqa: F401  (fixtures)

SUBMISSION = """\
dataset: {dataset}
models:
  - name: url-check
    provider: openai
    model: fake-gpt
    base_url: http://127.0.0.1:9/v1
    api_key_env: FAKE_PROVIDER_KEY
filters: {{limit: 2}}
"""


def test_a_client_command_without_defeater_url_says_so(env_without_defeater: dict[str, str], tmp_path: Path) -> None:
    submission = tmp_path / "job.yaml"
    submission.write_text(SUBMISSION.format(dataset="starter"))
    job = str(uuid.uuid4())
    for args in (["submit", str(submission)], ["status", job], ["wait", job], ["gate", job]):
        result = run(env_without_defeater, *args)
        assert result.returncode == ExitCode.ERROR, (args, result)
        assert (
            "error: DEFEATER_URL is not set: the address of the Defeater service, e.g. http://127.0.0.1:8000"
            in result.stderr
        ), (args, result.stderr)
        assert "cannot reach" not in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def embedded_api(run_env: dict[str, str]) -> Iterator[str]:  # noqa: F811
    """``defeater api`` with no Redis (jobs run inside it) on a private SQLite ledger; yields its address."""
    port = free_port()
    api = subprocess.Popen(
        [str(BIN / "defeater"), "api", "--port", str(port)], env=run_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base
    finally:
        api.terminate()
        api.wait(timeout=30)


def test_a_url_ending_in_v1_works(embedded_api: str, run_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    for suffix in ("", "/", "/v1", "/v1/"):
        with ServiceClient(Settings(url=embedded_api + suffix)) as client:
            names = [d["name"] for d in client.call("GET", "/v1/datasets")["items"]]
        assert "starter" in names, suffix
    env = run_env | {"DEFEATER_URL": embedded_api + "/v1/"}
    good, typo = tmp_path / "good.yaml", tmp_path / "typo.yaml"
    good.write_text(SUBMISSION.format(dataset="starter"))
    typo.write_text(SUBMISSION.format(dataset="strater"))
    submitted = run(env, "submit", str(good), "--quiet")
    assert submitted.returncode == 0, submitted.stderr
    status = run(env, "status", submitted.stdout.strip())
    assert status.returncode == 0 and submitted.stdout.strip() in status.stdout, status.stderr
    refused = run(env, "submit", str(typo))
    assert refused.returncode == ExitCode.ERROR and "did you mean 'starter'?" in refused.stderr, refused.stderr
