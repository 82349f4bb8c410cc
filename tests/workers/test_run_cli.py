"""``defeater run`` as a user runs it, against a fake provider process: SIGKILL midway, then ``--resume``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

from service.exit_codes import ExitCode
from tests.workers.processes import BIN, kill, ledger, start_run


def test_a_run_killed_midway_resumes_without_paying_twice(fake_process: Any, run_env: dict[str, str]) -> None:
    url = fake_process({"latency": {"distribution": "uniform", "mean_s": 0.05, "spread": 0.5}})
    models = ["-m", f"openai:fake-a@{url}/v1", "-m", f"anthropic:fake-b@{url}", "-m", f"google:fake-c@{url}"]
    process, job_id = start_run(run_env, *models, "--judge", f"openai:judge-run@{url}/v1", "--limit", "120")
    deadline = time.monotonic() + 60
    while ledger(url)["successes"] < 90 and time.monotonic() < deadline:
        time.sleep(0.05)
    kill(process)
    before = ledger(url)
    assert 90 <= before["successes"] < 720, "the kill should land mid-run"
    resumed = subprocess.run(
        [str(BIN / "defeater"), "run", "--resume", job_id, "--format", "json"],
        env=run_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    status = json.loads(resumed.stdout)
    assert status["state"] == "completed"
    assert status["progress"]["requests"] == {"total": 360, "pending": 0, "leased": 0, "succeeded": 360, "failed": 0}
    after = ledger(url)
    assert after["duplicate_successes"] == 0
    assert after["successes"] == 720  # 360 answers, 360 verdicts
    # only calls in flight (3 configs x 32) or answered but not yet written when the process died are asked again,
    # and the fake recognises them by their Idempotency-Key
    assert after["idempotent_replays"] <= 2 * 3 * 32


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(fake_process: Any, run_env: dict[str, str]) -> None:
    url = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.2}})
    judge = ["--judge", f"openai:judge-int@{url}/v1"]
    process, job_id = start_run(run_env, "-m", f"openai:fake-int@{url}/v1", *judge, "--limit", "150")
    while ledger(url)["successes"] < 10:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert f"defeater run --resume {job_id}" in out
    # the run says the job stopped, though the ledger keeps it running for --resume
    assert f"job {job_id}: stopped" in out and f"job {job_id}: running" not in out
    assert "Traceback" not in err
    status = subprocess.run(
        [str(BIN / "defeater"), "jobs", "show", job_id, "--format", "json"], env=run_env, capture_output=True, text=True
    )
    requests = json.loads(status.stdout)["progress"]["requests"]
    assert requests["leased"] == 0 and requests["succeeded"] == ledger(url)["by_model"]["fake-int"]["successes"]


def test_a_run_shows_both_phases_the_ledgers_spend_and_answers_from_the_cache(
    fake_process: Any, run_env: dict[str, str]
) -> None:
    url = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.01}})
    args = ("-m", f"openai:fake-both@{url}/v1", "--judge", f"openai:judge-both@{url}/v1", "--limit", "6")
    first = subprocess.run([str(BIN / "defeater"), "run", *args], env=run_env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    # the last progress line (a log's, not a terminal's) counts both phases; its spend is the summary's
    progress = next(line for line in reversed(first.stdout.splitlines()) if line.startswith("requests "))
    assert progress.startswith("requests 6/6, judgements 6/6;"), progress
    spend = progress.rsplit("$", 1)[1]
    assert f"spend ${spend}" in first.stdout
    again = subprocess.run([str(BIN / "defeater"), "run", *args], env=run_env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    progress = next(line for line in reversed(again.stdout.splitlines()) if line.startswith("requests "))
    assert "6 answers from cache" in progress, progress


def test_a_run_whose_judge_has_no_key_fails_at_once_and_says_so_last(
    fake_process: Any, run_env: dict[str, str]
) -> None:
    url = fake_process({})
    env = {k: v for k, v in run_env.items() if k != "OPENAI_API_KEY"}  # the default judge's variable
    env["DEFEATER_DEFAULT_JUDGE__BASE_URL"] = f"{url}/v1"  # on loopback: only its key is missing
    args = ("-m", f"anthropic:fake-claude@{url}", "--limit", "4")
    ran = subprocess.run([str(BIN / "defeater"), "run", *args], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == ExitCode.FAILED, ran.stderr
    assert ran.stderr.splitlines() == [
        'error: judge "default-judge" needs OPENAI_API_KEY, which is not set',
        "warning: 4 of 4 requests failed (missing_key: 4)",
    ]
    assert "% of judged answers" not in ran.stdout  # no table of figures that nothing was judged for
    assert ledger(url)["calls"] == 0
