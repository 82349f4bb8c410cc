"""The submission file of ``defeater submit``: checked before anything is sent, problems named by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.client_file import load_submission
from service.errors import ValidationFailed
from service.model_configs.schemas import ModelConfigCreate

GOOD = """\
dataset: blind-refusal
models:
  - name: candidate
    provider: openai
    model: gpt-5.4
    params: {max_tokens: 800}
  - baseline-2026-10
filters:
  limit: 200
gate:
  max_unjudged_share: 0.05
  checks:
    - {metric: helps_rate, cases: defeated, op: ">=", threshold: 0.3}
    - metric: helps_rate
      cases: defeated
      baseline: baseline-2026-10
"""


def _problem(tmp_path: Path, text: str, name: str = "job.yaml") -> ValidationFailed:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValidationFailed) as caught:
        load_submission(path)
    return caught.value


def test_a_good_file_gives_configs_refs_and_the_job_body(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(GOOD)
    submission = load_submission(path)
    assert submission.dataset == "blind-refusal"
    assert isinstance(submission.models[0], ModelConfigCreate) and submission.models[1] == "baseline-2026-10"
    assert submission.judges is None
    assert submission.job["filters"]["limit"] == 200 and len(submission.job["gate"]["checks"]) == 2


def test_json_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text('{"dataset": "starter", "models": ["gpt"], "samples_per_case": 2, "webhook_url": "https://h/x"}')
    job = load_submission(path).job
    assert job["samples_per_case"] == 2 and job["webhook_url"] == "https://h/x"


def test_an_unknown_metric_is_named_with_its_line(tmp_path: Path) -> None:
    problem = _problem(tmp_path, GOOD.replace("- metric: helps_rate", "- metric: help_rate"))
    assert problem.errors[0].field == "gate.checks[1].metric"
    assert problem.errors[0].message.startswith("line 14:") and "unknown metric" in problem.errors[0].message


def test_a_bad_model_config_field_is_named_with_its_line(tmp_path: Path) -> None:
    problem = _problem(tmp_path, GOOD.replace("provider: openai", "provider: openia"))
    assert problem.errors[0].field == "models[0].provider" and problem.errors[0].message.startswith("line 4:")
    key = _problem(tmp_path, GOOD.replace("    params:", "    api_key: sk-secret\n    params:"))
    assert key.errors[0].field == "models[0].api_key" and "sk-secret" not in str(key.errors) + key.detail


def test_broken_yaml_and_a_wrong_shape_name_the_line(tmp_path: Path) -> None:
    broken = _problem(tmp_path, "dataset: x\nmodels: [a, b\nfilters: {}\n")
    assert "line 3" in broken.detail or "line 4" in broken.detail
    assert "line 1" in _problem(tmp_path, "- just\n- a list\n").detail
    missing = _problem(tmp_path, "models: [gpt]\n")
    assert missing.errors[0].field == "dataset"


def test_unknown_keys_and_values_name_the_closest_valid_one_with_their_line(tmp_path: Path) -> None:
    text = (
        GOOD.replace("filters:", "filtres:")
        .replace("provider: openai", "provider: opneai")
        .replace("params: {max_tokens: 800}", "params: {max_token: 800}")
        .replace("cases: defeated, op", "cases: defeatd, op")
    )
    problems = {e.field: e.message for e in _problem(tmp_path, text).errors}
    assert problems["filtres"].startswith("line 9:") and "did you mean 'filters'?" in problems["filtres"]
    assert "samples_per_case" in problems["filtres"] and "gate" in problems["filtres"]
    assert problems["gate.checks[0].cases"].startswith("line 13:")
    assert "did you mean 'defeated'?" in problems["gate.checks[0].cases"]
    configs = GOOD.replace("provider: openai", "provider: opneai").replace("{max_tokens: 800}", "{max_token: 800}")
    models = {e.field: e.message for e in _problem(tmp_path, configs).errors}
    assert (
        models["models[0].provider"].startswith("line 4:") and "did you mean 'openai'?" in models["models[0].provider"]
    )
    assert models["models[0].params.max_token"].startswith("line 6:")
    assert "did you mean 'max_tokens'?" in models["models[0].params.max_token"]


def test_the_published_schema_is_the_one_the_file_is_checked_with() -> None:
    from service.client_file import submission_schema
    from tests.conftest import ROOT

    committed = (ROOT / "openapi" / "submission.schema.json").read_text()
    assert committed == submission_schema(), "openapi/submission.schema.json is stale: run `defeater schema`"
    schema = json.loads(committed)
    assert set(schema["properties"]) == {"dataset", "models", "judges", "filters", "samples_per_case", "budget_usd",
                                         "use_cache", "webhook_url", "gate"}  # fmt: skip
    assert {"$ref": "#/$defs/ModelConfigCreate"} in schema["properties"]["models"]["items"]["anyOf"]
    assert set(schema["$defs"]) >= {"ModelConfigCreate", "Params", "Limits", "JobFilters", "GateSpec", "GateCheck"}
    documented = (ROOT / "docs" / "submission.md").read_text()
    defs = schema["$defs"]
    names = [*schema["properties"], *defs["JobFilters"]["properties"], *defs["GateSpec"]["properties"]]
    names += [*defs["GateCheck"]["properties"], *defs["ModelConfigCreate"]["properties"]]
    for name in names:
        assert f"`{name}`" in documented, f"docs/submission.md does not describe {name}"
