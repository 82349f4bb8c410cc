"""The study's 6 recorded models replayed through ``defeater run`` over the three wire formats: every recorded
answer stored verbatim with its recorded usage, nothing paid twice, across a SIGKILL and ``--resume``."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.workers.processes import BIN, kill, ledger, start_run

# slug -> the wire format it is replayed over
WIRES = {
    "claude-sonnet-4-6": "anthropic",
    "gemini-3-1-pro": "google",
    "gpt-5-4-thinking": "openai",
    "grok-4": "openai_compatible",
    "qwen-3-5-plus": "openai",
    "nemotron-3-nano": "google",
}
PATHS = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "google": ""}


def recorded(study_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for slug in WIRES:
        with gzip.open(study_dir / "responses" / f"{slug}.jsonl.gz", "rt") as f:
            for line in f:
                row = json.loads(line)
                out[(slug, row["case_id"])] = row
    return out


def test_replaying_the_six_recorded_models_stores_every_answer_verbatim(
    fake_process: Any, run_env: dict[str, str], study_dir: Path, tmp_path: Path
) -> None:
    url = fake_process({"mode": "replay", "replay_dir": str(study_dir)})
    imported = subprocess.run(
        [str(BIN / "defeater"), "datasets", "import", str(study_dir / "cases.jsonl"), "--name", "study"],
        env=run_env, capture_output=True, text=True,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    models = [arg for slug, wire in WIRES.items() for arg in ("-m", f"{wire}:{slug}@{url}{PATHS[wire]}")]
    process, job_id = start_run(run_env, "--dataset", "study", *models)
    while ledger(url)["successes"] < 2_000:
        time.sleep(0.05)
    kill(process)
    resumed = subprocess.run(
        [str(BIN / "defeater"), "run", "--resume", job_id, "--format", "json"],
        env=run_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    book = ledger(url)
    assert book["duplicate_successes"] == 0

    expected = recorded(study_dir)
    db = sqlite3.connect(run_env["DEFEATER_DATABASE_URL"].removeprefix("sqlite:///"))
    rows = db.execute(
        """SELECT m.model, c.external_id, r.state, r.failure_reason, s.text, s.input_tokens, s.output_tokens,
                  s.reasoning_tokens, s.cached_tokens
           FROM requests r JOIN model_configs m ON m.id = r.model_config_id JOIN cases c ON c.id = r.case_id
           LEFT JOIN responses s ON s.request_id = r.id WHERE r.job_id = ?""",
        (job_id.replace("-", ""),),
    ).fetchall()
    assert len(rows) == 7_740
    for slug, case_id, state, reason, text, tin, tout, treason, tcached in rows:
        want = expected[(slug, case_id)]
        if want["status"] == "error":
            assert (state, reason) == ("failed", "bad_request"), (slug, case_id)
            continue
        usage = want["usage"]
        assert state == "succeeded", (slug, case_id, reason)
        assert text == want["response"], (slug, case_id)
        assert (tin, tout) == (usage["prompt_tokens"], usage["completion_tokens"]), (slug, case_id)
        assert (treason or 0) == (usage.get("reasoning_tokens") or 0), (slug, case_id)
        assert (tcached or 0) == (usage.get("cached_tokens") or 0), (slug, case_id)
