"""``defeater demo`` from a user's shell: offline, under a minute, a results table and an HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from tests.test_cli import DEFEATER


def test_the_demo_runs_offline_and_writes_the_report(env_without_defeater: dict[str, str], tmp_path: Path) -> None:
    env = env_without_defeater | {"XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("DEFEATER_DATABASE_URL")
    report = tmp_path / "report.html"
    started = time.monotonic()
    result = subprocess.run(
        [DEFEATER, "demo", "--report", str(report)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    for name in ("demo-openai", "demo-anthropic", "demo-gemini"):
        assert name in result.stdout
    assert "completed" in result.stdout and "Traceback" not in result.stderr
    html = report.read_text()
    assert html.count("<svg") == 3 and "demo-anthropic" in html and "https://" not in html
    job_id = re.search(r"defeater results ([0-9a-f-]{36})", result.stdout)
    assert job_id is not None
    env["DEFEATER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'data' / 'defeater' / 'demo.db'}"
    again = subprocess.run([DEFEATER, "results", job_id.group(1), "--format", "json"], env=env, capture_output=True,
                           text=True)  # fmt: skip
    figures = json.loads(again.stdout)
    assert figures["state"] == "completed" and len(figures["by_model_config"]) == 3
    assert figures["overall"]["all"]["requests"] == 504 and figures["overall"]["all"]["open"] == 0
    assert figures["overall"]["all"]["n"] == 504
