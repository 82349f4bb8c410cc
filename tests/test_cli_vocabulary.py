"""The CLI speaks the API's words: flags named after the contract's fields (the old names kept as aliases), config
files in YAML or JSON, unknown keys and values answered with the closest valid one, and local ledgers that are
never created by a command that only reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.exit_codes import ExitCode
from tests.test_cli import run

CASES = ["starter_control_national_government_1", "starter_content_defeat_national_government_1"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--samples-per-case", "2", "--budget-usd", "5", "--authority-type", "national_government"],
        ["--samples", "2", "--budget", "5", "--authority", "national_government"],
    ],
    ids=["contract names", "aliases"],
)
def test_job_flags_are_named_after_the_contract_fields(env_without_defeater: dict[str, str], flags: list[str]) -> None:
    cases = [arg for case in CASES for arg in ("--case-id", case)]
    result = run(env_without_defeater, "jobs", "create", "-m", "openai:gpt-5.4", *flags, *cases, "--format", "json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["samples_per_case"], job["budget_usd"], job["case_count"], job["request_count"]) == (2, 5.0, 2, 4)
    assert job["filters"] == {"authority_types": ["national_government"], "case_ids": CASES}


def test_an_unknown_authority_type_or_case_is_named(env_without_defeater: dict[str, str]) -> None:
    result = run(env_without_defeater, "jobs", "create", "-m", "openai:gpt-5.4", "--authority-type", "shcool")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "did you mean 'school'?" in result.stderr and "national_government" in result.stderr
    result = run(env_without_defeater, "jobs", "create", "-m", "openai:gpt-5.4", "--case-id", "no-such-case")
    assert result.returncode != 0 and "no-such-case" in result.stderr


def test_configs_register_reads_yaml_and_names_the_line_of_a_problem(
    env_without_defeater: dict[str, str], tmp_path: Path
) -> None:
    good = tmp_path / "configs.yaml"
    good.write_text(
        "# two configs, the YAML way\n"
        "- name: candidate\n  provider: openai\n  model: gpt-5.4\n  params: {max_tokens: 900}\n"
        "- name: rival\n  provider: anthropic\n  model: claude-x\n"
    )
    result = run(env_without_defeater, "configs", "register", str(good))
    assert result.returncode == 0, result.stderr
    assert "registered: candidate" in result.stdout and "registered: rival" in result.stdout
    listed = run(env_without_defeater, "configs", "list")
    assert "candidate" in listed.stdout and "claude-x" in listed.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: candidate2\nprovider: opneai\nmodel: gpt-5.4\nparams:\n  temprature: 0.2\n")
    result = run(env_without_defeater, "configs", "register", str(bad))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "line 2" in result.stderr and "did you mean 'openai'?" in result.stderr
    assert "line 5" in result.stderr and "did you mean 'temperature'?" in result.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text("- name: ok\n  provider: openai\n  model: m\n- name: nope\n  provider: anthropic\n  model: m\n"
                     "  params:\n    top_p: 0.5\n")  # fmt: skip
    result = run(env_without_defeater, "configs", "register", str(rules))
    assert result.returncode != 0 and "[1].params.top_p" in result.stderr and "line 8" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("- name: a\n  provider: openai\n  model: [unclosed\n")
    result = run(env_without_defeater, "configs", "register", str(broken))
    assert result.returncode != 0 and "line 4" in result.stderr and "Traceback" not in result.stderr
    assert "registered: ok" not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["results", "00000000-0000-0000-0000-000000000001"],
        ["jobs", "list"],
        ["jobs", "show", "00000000-0000-0000-0000-000000000001"],
        ["datasets", "list"],
        ["configs", "list"],
        ["tokens", "list"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_read_command_does_not_create_a_ledger(
    env_without_defeater: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    ledger = tmp_path / "typo" / "ledgr.db"
    env = env_without_defeater | {"DEFEATER_DATABASE_URL": f"sqlite:///{ledger}"}
    result = run(env, *args)
    assert result.returncode == ExitCode.ERROR, result
    assert f"no ledger at {ledger}" in result.stderr and "Traceback" not in result.stderr
    assert not ledger.exists() and not ledger.parent.exists()


def test_a_write_command_still_creates_its_ledger(env_without_defeater: dict[str, str], tmp_path: Path) -> None:
    ledger = tmp_path / "new" / "ledger.db"
    env = env_without_defeater | {"DEFEATER_DATABASE_URL": f"sqlite:///{ledger}"}
    result = run(env, "jobs", "create", "-m", "openai:gpt-5.4", "--limit", "3", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert ledger.exists() and run(env, "jobs", "list").returncode == 0
