"""``defeater demo`` from a user's shell: offline, under a minute, a results table and an HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from tests.test_cli import DEFEATER


def _demo(env: dict[str, str], report: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    """Run the demo; its output, and the environment and job of the "see it again" command it prints."""
    result = subprocess.run(
        [DEFEATER, "demo", "--report", str(report)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    again = re.search(r"DEFEATER_DATABASE_URL=(\S+) defeater results ([0-9a-f-]{36})", result.stdout)
    assert again is not None, result.stdout
    return result, env | {"DEFEATER_DATABASE_URL": again.group(1)}, again.group(2)


def test_the_demo_runs_offline_and_writes_the_report(env_without_defeater: dict[str, str], tmp_path: Path) -> None:
    env = env_without_defeater | {"XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("DEFEATER_DATABASE_URL")
    report = tmp_path / "report.html"
    started = time.monotonic()
    result, first_env, first_job = _demo(env, report)
    assert time.monotonic() - started < 60
    for name in ("demo-openai", "demo-anthropic", "demo-gemini"):
        assert name in result.stdout
    assert "completed" in result.stdout and "Traceback" not in result.stderr
    html = report.read_text()
    assert html.count("<svg") == 3 and "demo-anthropic" in html and "https://" not in html
    # a second demo gets a ledger of its own (so it makes its own calls) and leaves the first one's in place
    _, second_env, second_job = _demo(env, tmp_path / "report-2.html")
    assert second_env["DEFEATER_DATABASE_URL"] != first_env["DEFEATER_DATABASE_URL"] and second_job != first_job
    for see_again, job in ((first_env, first_job), (second_env, second_job)):
        again = subprocess.run([DEFEATER, "results", job, "--format", "json"], env=see_again, capture_output=True,
                               text=True)  # fmt: skip
        assert again.returncode == 0, again.stderr
        figures = json.loads(again.stdout)
        assert figures["state"] == "completed" and len(figures["by_model_config"]) == 3
        assert figures["overall"]["all"]["requests"] == 504 and figures["overall"]["all"]["open"] == 0
        assert figures["overall"]["all"]["n"] == 504
