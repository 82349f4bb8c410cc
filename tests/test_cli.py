"""The command line, run as a user runs it: the installed ``defeater`` script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.exit_codes import ExitCode
from tests.conftest import _create_postgres_database, _drop_postgres_database

DEFEATER = str(Path(sys.executable).parent / "defeater")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEFEATER, *args], env=env, capture_output=True, text=True, timeout=120)


def assert_clean_failure(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == ExitCode.ERROR, result
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr


def test_importing_the_study_prints_its_counts(env_without_defeater: dict[str, str], study_dir: Path) -> None:
    result = run(env_without_defeater, "datasets", "import", str(study_dir / "cases.jsonl"), "--name", "study",
                 "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["case_count"] == 1290 and body["created"] is True
    assert body["family_counts"]["application_defeat"] == 372


def test_a_bad_file_names_its_line_and_imports_nothing(
    env_without_defeater: dict[str, str], study_dir: Path, tmp_path: Path
) -> None:
    assert run(env_without_defeater, "db", "upgrade").returncode == 0  # a ledger to list (reading creates none)
    lines = (study_dir / "cases.jsonl").read_text().splitlines()[:60]
    case = json.loads(lines[41])
    del case["user_query"]
    lines[41] = json.dumps(case)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines))
    assert_clean_failure(run(env_without_defeater, "datasets", "import", str(bad), "--name", "bad"),
                         "bad.jsonl", "line 42", "user_query")  # fmt: skip
    listed = run(env_without_defeater, "datasets", "list")
    assert "starter" in listed.stdout and "bad" not in listed.stdout


def test_jobs_create_registers_models_and_writes_the_requests(env_without_defeater: dict[str, str]) -> None:
    result = run(env_without_defeater, "jobs", "create", "-m", "openai:gpt-5.4", "-m", "gemini:gemini-3.1-pro",
                 "--limit", "10", "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["request_count"] == 20 and job["progress"]["requests"]["pending"] == 20
    shown = run(env_without_defeater, "jobs", "show", job["id"])
    assert shown.returncode == 0 and "queued" in shown.stdout
    cancelled = run(env_without_defeater, "jobs", "cancel", job["id"])
    assert "cancelled" in cancelled.stdout
    # a cancelled job's open units will never run: its figures are final, and it says so
    shown = run(env_without_defeater, "results", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "20 units were never run: the job is cancelled" in shown.stdout and "will change" not in shown.stdout


def test_a_usage_error_exits_with_the_error_code_not_inconclusive(env_without_defeater: dict[str, str]) -> None:
    missing = run(env_without_defeater, "jobs", "show")
    assert missing.returncode == ExitCode.ERROR and "Missing argument" in missing.stderr
    unknown = run(env_without_defeater, "jobs", "list", "--bogus")
    assert unknown.returncode == ExitCode.ERROR and "No such option" in unknown.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr
    assert run(env_without_defeater, "jobs", "list", "--help").returncode == ExitCode.OK


def test_bad_arguments_get_clear_messages(env_without_defeater: dict[str, str], tmp_path: Path) -> None:
    assert_clean_failure(run(env_without_defeater, "jobs", "create", "-m", "gpt-5.4"), "provider:model")
    assert_clean_failure(run(env_without_defeater, "jobs", "create", "-m", "mistral:large"), "provider")
    assert_clean_failure(run(env_without_defeater, "jobs", "show", "42"), "not a job id")
    assert_clean_failure(run(env_without_defeater, "datasets", "import", str(tmp_path / "nope.jsonl"), "-n", "x"),
                         "nope.jsonl")  # fmt: skip
    config = tmp_path / "configs.json"
    config.write_text('[\n  {"name": "a", "provider": "openai", "model": "m"},\n  {"name": "b",, }\n]')
    assert_clean_failure(run(env_without_defeater, "configs", "register", str(config)), "line 3")
    config.write_text('[{"name": "a", "provider": "anthropic", "model": "m", "params": {"top_p": 0.5}}]')
    assert_clean_failure(run(env_without_defeater, "configs", "register", str(config)), "params.top_p")


def test_an_unreachable_database_is_named(env_without_defeater: dict[str, str]) -> None:
    env = env_without_defeater | {"DEFEATER_DATABASE_URL": "postgresql://postgres:hunter2@127.0.0.1:1/none"}
    result = run(env, "jobs", "list")
    assert_clean_failure(result, "cannot reach the database", "127.0.0.1:1")
    assert "hunter2" not in result.stderr


@pytest.mark.postgres
async def test_postgres_needs_db_upgrade_first(env_without_defeater: dict[str, str]) -> None:
    name, url = await _create_postgres_database()
    try:
        env = env_without_defeater | {"DEFEATER_DATABASE_URL": url}
        assert_clean_failure(run(env, "jobs", "list"), "defeater db upgrade")
        upgraded = run(env, "db", "upgrade")
        assert upgraded.returncode == 0 and "revision 0006" in upgraded.stdout
        assert run(env, "jobs", "list").returncode == 0
    finally:
        await _drop_postgres_database(name)


def test_the_fake_provider_command_serves_until_stopped(env_without_defeater: dict[str, str]) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [DEFEATER, "fake-provider", "--port", str(port)], env=env_without_defeater,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                book = httpx.get(f"http://127.0.0.1:{port}/_fake/ledger", timeout=1).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the fake provider did not start"
                time.sleep(0.1)
        assert book["calls"] == 0
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": "Bearer x"},
            json={"model": "fake-x", "messages": [{"role": "user", "content": "hello"}]}, timeout=5,
        ).json()  # fmt: skip
        assert answer["choices"][0]["message"]["content"]
    finally:
        process.terminate()
        process.wait(timeout=10)
    bad = run(env_without_defeater, "fake-provider", "--mode", "telepathy")
    assert_clean_failure(bad, "mode")


def test_the_help_lists_every_command_once_in_a_newcomers_order(env_without_defeater: dict[str, str]) -> None:
    from service.cli import HELP_PANELS

    shown = run(env_without_defeater | {"COLUMNS": "200"}, "--help")
    assert shown.returncode == ExitCode.OK, shown.stderr
    # a row that names a command starts right after the panel's border; a wrapped description is indented
    listed = [line.split()[1] for line in shown.stdout.splitlines() if line.startswith("│ ") and line[2] != " "]
    commands = [name for name in listed if not name.startswith("-")]
    assert commands == [name for names in HELP_PANELS.values() for name in names]  # nothing left out of a panel
    panels = [line for line in shown.stdout.splitlines() if line.startswith("╭─ ")]
    assert [p.removeprefix("╭─ ").split(" ─")[0] for p in panels[1:]] == list(HELP_PANELS)
