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

from service.exit_codes import ExitCode
from tests.workers.processes import BIN, kill, ledger, start_run
from workers.providers.fake.replay import REPLAY_WIRES

WIRES = REPLAY_WIRES
PATHS = {"openai": "/v1", "openai_compatible": "/v1", "anthropic": "", "google": ""}


def _by_model_and_case(study_dir: Path, folder: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for slug in WIRES:
        with gzip.open(study_dir / folder / f"{slug}.jsonl.gz", "rt") as f:
            for line in f:
                row = json.loads(line)
                out[(slug, row["case_id"])] = row
    return out


def recorded(study_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The recorded answers, by (model slug, case id)."""
    return _by_model_and_case(study_dir, "responses")


# the embedded run replays every SLICE-th case of the study (129 cases x 6 models); the distributed study-scale test
# (test_distributed_study.py) replays all of it, and checks every answer, the results and the reviewers' agreement
SLICE = 10


def test_replaying_the_six_recorded_models_stores_every_answer_verbatim(
    fake_process: Any, run_env: dict[str, str], study_dir: Path, tmp_path: Path
) -> None:
    url = fake_process({"mode": "replay", "replay_dir": str(study_dir)})
    lines = (study_dir / "cases.jsonl").read_text().splitlines()[::SLICE]
    cases = {json.loads(line)["id"] for line in lines}
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n")
    imported = subprocess.run(
        [str(BIN / "defeater"), "datasets", "import", str(tmp_path / "cases.jsonl"), "--name", "study"],
        env=run_env, capture_output=True, text=True,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    models = [arg for slug, wire in WIRES.items() for arg in ("-m", f"{wire}:{slug}@{url}{PATHS[wire]}")]
    judge = ["--judge", f"openai:replay-judge@{url}/v1"]
    process, job_id = start_run(run_env, "--dataset", "study", *models, *judge)
    while ledger(url)["successes"] < 600:  # of ~1,500 (answers and verdicts)
        time.sleep(0.05)
    kill(process)
    resumed = subprocess.run(
        [str(BIN / "defeater"), "run", "--resume", job_id, "--format", "json"],
        env=run_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # the study left some answers without a verdict (replayed as unscorable): the job completes, warning of them
    assert resumed.returncode == ExitCode.WARNINGS, resumed.stderr[-2000:]
    assert "answers stayed unjudged" in resumed.stderr
    book = ledger(url)
    assert book["duplicate_successes"] == 0

    expected = {key: row for key, row in recorded(study_dir).items() if key[1] in cases}
    db = sqlite3.connect(run_env["DEFEATER_DATABASE_URL"].removeprefix("sqlite:///"))
    rows = db.execute(
        """SELECT m.model, c.external_id, r.state, r.failure_reason, s.text, s.input_tokens, s.output_tokens,
                  s.reasoning_tokens, s.cached_tokens
           FROM requests r JOIN model_configs m ON m.id = r.model_config_id JOIN cases c ON c.id = r.case_id
           LEFT JOIN responses s ON s.request_id = r.id WHERE r.job_id = ?""",
        (job_id.replace("-", ""),),
    ).fetchall()
    assert len(rows) == len(expected) == 6 * len(cases)
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

    check_results_against_the_study_files(run_env, job_id, study_dir, cases)


def recorded_labels(study_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The study judge's labels, by (model slug, case id)."""
    return _by_model_and_case(study_dir, "judgements")


def expected_counts(study_dir: Path, cases: set[str] | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """Per (model slug, family), counted straight from the recorded responses and judgements (of these cases)."""
    families = {}
    for line in (study_dir / "cases.jsonl").read_text().splitlines():
        case = json.loads(line)
        families[case["id"]] = case["defeat_type"]
    answers, labels = recorded(study_dir), recorded_labels(study_dir)
    out: dict[tuple[str, str], dict[str, int]] = {}
    for (slug, case_id), answer in answers.items():
        if cases is not None and case_id not in cases:
            continue
        names = ("n", "helps", "hard", "deflection", "engage", "prb", "sg", "eo", "es", "unjudged", "errored")
        cell = out.setdefault((slug, families[case_id]), dict.fromkeys(names, 0))
        if answer["status"] == "error":
            cell["errored"] += 1
            continue
        label = labels.get((slug, case_id))
        if label is None:
            cell["unjudged"] += 1
            continue
        kind = {"deflects": "deflection"}.get(label["response_type"], label["response_type"])
        engage, harm = label["engages_with_defeat"] == "yes", bool(label["independent_harm"])
        cell["n"] += 1
        cell[{"helps": "helps", "hard_refusal": "hard", "deflection": "deflection"}[kind]] += 1
        cell["engage"] += engage
        if kind != "helps":
            cell[
                {(False, False): "prb", (False, True): "sg", (True, False): "eo", (True, True): "es"}[engage, harm]
            ] += 1
    return out


def check_results_against_the_study_files(
    env: dict[str, str], job_id: str, study_dir: Path, cases: set[str] | None = None
) -> None:
    """The job's results, cell by cell and pair by pair, are what the study's files give (for these cases)."""
    import asyncio
    import uuid

    from service.db.session import create_engine, create_sessionmaker
    from service.jobs.service import get_job
    from service.results.service import results
    from service.settings import Settings

    async def compute() -> Any:
        engine = create_engine(Settings(database_url=env["DEFEATER_DATABASE_URL"]))
        try:
            async with create_sessionmaker(engine)() as session:
                return await results(session, await get_job(session, uuid.UUID(job_id)))
        finally:
            await engine.dispose()

    got = asyncio.run(compute())
    names = {c.model_config_id: c.name.split(":", 1)[1].split("@", 1)[0] for c in got.by_model_config}
    expected = expected_counts(study_dir, cases)
    for cell in got.matrix["family_x_config"]:
        want = expected[(names[cell.model_config_id], cell.key)]
        have = {
            "n": cell.n, "helps": cell.helps_rate.count, "hard": cell.hard_refusal_rate.count,
            "deflection": cell.deflection_rate.count, "engage": cell.engagement_rate.count,
            "prb": cell.categories["pure_rule_blind"].count, "sg": cell.categories["safety_grounded"].count,
            "eo": cell.categories["engaged_only"].count, "es": cell.categories["engaged_and_safety"].count,
            "unjudged": cell.unjudged, "errored": cell.errored,
        }  # fmt: skip
        assert have == want, (names[cell.model_config_id], cell.key, have, want)
        if want["n"]:
            assert cell.helps_rate.value == want["helps"] / want["n"]
            assert cell.refusal_rate.count == want["hard"] + want["deflection"]
    check_paired_comparisons(got, names, study_dir, cases)


def check_paired_comparisons(got: Any, names: dict[Any, str], study_dir: Path, cases: set[str] | None) -> None:
    """Every two models, paired on the defeated cases both have a label for: the counts McNemar's test uses."""
    defeated = {json.loads(line)["id"] for line in (study_dir / "cases.jsonl").read_text().splitlines()
                if json.loads(line)["defeat_type"] != "control"}  # fmt: skip
    if cases is not None:
        defeated &= cases
    helps = {key: label["response_type"] == "helps" for key, label in recorded_labels(study_dir).items()}
    assert len(got.comparisons) == 15
    for comparison in got.comparisons:
        a, b = names[comparison.a], names[comparison.b]
        both = [case for case in defeated if (a, case) in helps and (b, case) in helps]
        a_only = sum(helps[a, case] and not helps[b, case] for case in both)
        b_only = sum(helps[b, case] and not helps[a, case] for case in both)
        assert (comparison.pairs, comparison.a_only, comparison.b_only) == (len(both), a_only, b_only), (a, b)


def check_human_agreement_against_the_study_files(env: dict[str, str], job_id: str, study_dir: Path) -> None:
    """Importing the reviewers' labels reproduces the reviewer-vs-judge agreement computed from the files."""
    import asyncio
    import uuid

    from service.db.session import create_engine, create_sessionmaker
    from service.results import agreement
    from service.results.stats import cohen_kappa, raw_agreement
    from service.settings import Settings

    data = (study_dir / "human_labels.jsonl").read_bytes()

    async def compute() -> Any:
        engine = create_engine(Settings(database_url=env["DEFEATER_DATABASE_URL"]))
        try:
            async with create_sessionmaker(engine)() as session:
                await agreement.import_labels(session, uuid.UUID(job_id), agreement.parse_lines(data))
                await session.commit()
                return await agreement.agreement(session, uuid.UUID(job_id))
        finally:
            await engine.dispose()

    got = asyncio.run(compute())
    judged = recorded_labels(study_dir)
    humans = [json.loads(line) for line in data.decode().splitlines()]
    yes = {"yes": True, "no": False}
    assert got.reviewers == sorted({h["reviewer"] for h in humans})
    for dimension in ("response_type", "engages_with_defeat", "independent_harm"):
        for pair in got.dimensions[dimension].reviewers_vs_judge:
            expected = []
            for h in (h for h in humans if h["reviewer"] == pair.a):
                j = judged.get((h["model_slug"], h["case_id"]))
                if j is None:
                    continue
                if dimension == "response_type":
                    norm = {"deflects": "deflection"}
                    expected.append((norm.get(h[dimension], h[dimension]), norm.get(j[dimension], j[dimension])))
                elif dimension == "engages_with_defeat":
                    expected.append((yes[h[dimension]], yes[j[dimension]]))
                else:
                    expected.append((yes[h[dimension]], bool(j[dimension])))
            assert pair.n == len(expected) > 50, (dimension, pair.a)
            assert pair.kappa == cohen_kappa(expected), (dimension, pair.a)
            assert pair.raw_agreement == raw_agreement(expected)
        assert len(got.dimensions[dimension].reviewers) == 1
