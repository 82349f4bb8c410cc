"""The submission file of ``defeater submit``: model configs, dataset, filters and gate, in YAML or JSON.

Everything is checked before anything is sent, with the schemas the API itself uses, and a problem is reported
with the line of the file it is on, so a CI log points straight at it::

    dataset: blind-refusal              # a dataset name or id
    models:
      - name: candidate                 # a full model config (registered, or found if already registered) ...
        provider: openai
        model: gpt-5.4
      - baseline-2026-10                # ... or the name or id of a registered one
    judges: [default-judge]             # optional: the service's default judge otherwise
    filters: {families: [...], limit: 500}
    samples_per_case: 1
    budget_usd: 50
    webhook_url: https://ci.example/hooks/defeater   # optional: a signed POST when the job ends
    gate: {max_unjudged_share: 0.02, checks: [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema

from service.datasets.taxonomy import AUTHORITY_TYPES
from service.errors import FieldError, ValidationFailed, field_errors, field_name
from service.jobs.schemas import GateSpec, JobFilters, WebhookUrl
from service.model_configs.schemas import ModelConfigCreate, provider_problems


class _Body(BaseModel):
    """The file's top level; model configs are checked one by one (a name, or a full config)."""

    model_config = ConfigDict(extra="forbid", title="Defeater submission")

    dataset: str = Field(
        min_length=1, description="the dataset's id, its name (its most recently imported version) or name@version"
    )
    models: list[Any] = Field(
        min_length=1, description="the configs to evaluate: each a registered config's name or id, or a full config"
    )
    judges: list[Any] | None = Field(
        default=None, min_length=1, description="judge configs, as models; the service's default judge otherwise"
    )
    filters: JobFilters = Field(default_factory=JobFilters, description="which cases of the dataset to run")
    samples_per_case: int = Field(default=1, ge=1, description="answers asked of each model for each case")
    budget_usd: float | None = Field(default=None, gt=0, description="the job pauses when its spend reaches this")
    use_cache: bool = Field(default=True, description="reuse identical earlier calls instead of paying again")
    webhook_url: WebhookUrl | None = Field(default=None, description="a signed POST here when the job ends")
    gate: GateSpec | None = Field(default=None, description="the checks `defeater gate` decides pass or fail on")


def submission_schema() -> str:
    """The JSON Schema of a submission file, as published in ``openapi/submission.schema.json``.

    Generated from the models that check the file; ``models`` and ``judges`` items are a name or id, or a
    ``ModelConfigCreate`` (the body of ``POST /v1/model-configs``).
    """
    _, document = models_json_schema([(_Body, "validation"), (ModelConfigCreate, "validation")])
    defs = document["$defs"]
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://defeater.dev/schemas/submission.schema.json",
        **defs.pop("_Body"),
        "$defs": defs,
    }
    item = {
        "anyOf": [
            {"type": "string", "minLength": 1, "description": "a registered model config's name or id"},
            {"$ref": "#/$defs/ModelConfigCreate"},
        ]
    }
    schema["description"] = "The file of `defeater submit` (YAML or JSON): the job to start, see docs/submission.md"
    properties = schema["properties"]
    properties["models"]["items"] = item
    _array_of(properties["judges"])["items"] = item
    # the authority types are checked by a validator (for its "did you mean"); the schema lists them for editors
    _array_of(defs["JobFilters"]["properties"]["authority_types"])["items"]["enum"] = list(AUTHORITY_TYPES)
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


@dataclass
class Submission:
    """A checked submission: configs to register (or names / ids to look up) and the job's other fields."""

    dataset: str
    models: list[ModelConfigCreate | str]
    judges: list[ModelConfigCreate | str] | None
    job: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """A YAML (or JSON) file read twice: its data, and its node tree, which knows the line of every value."""

    data: Any
    root: yaml.Node | None


def _array_of(field_schema: dict[str, Any]) -> dict[str, Any]:
    """The array branch of an optional list field's schema."""
    found: dict[str, Any] = next(option for option in field_schema["anyOf"] if option.get("type") == "array")
    return found


def read_document(path: Path) -> Document:
    """Parse a YAML or JSON file; a syntax error is a ``ValidationFailed`` naming the line."""
    text = path.read_text(encoding="utf-8")
    try:
        return Document(yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "the file"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationFailed(f"{path}: {where}: not valid YAML or JSON: {problem}") from None


def load_submission(path: Path) -> Submission:
    """Read and check a submission file; every problem names its line and field (``ValidationFailed``)."""
    document = read_document(path)
    data, root = document.data, document.root
    if not isinstance(data, dict):
        raise ValidationFailed(f"{path}: line 1: expected a mapping of dataset, models, filters, gate, ...")
    try:
        body = _Body.model_validate(data)
    except ValidationError as exc:
        raise located(path, root, field_errors(exc.errors(include_url=False), model=_Body)) from None
    problems: list[FieldError] = []
    models = _configs(body.models, "models", problems)
    judges = _configs(body.judges, "judges", problems) if body.judges is not None else None
    if problems:
        raise located(path, root, problems)
    job = body.model_dump(mode="json", exclude={"dataset", "models", "judges"}, exclude_none=True)
    return Submission(dataset=body.dataset, models=models, judges=judges, job=job)


def load_configs(path: Path) -> list[ModelConfigCreate]:
    """Read and check a file of model configs (one, or a list; YAML or JSON), each problem with its line."""
    document = read_document(path)
    many = isinstance(document.data, list)
    problems: list[FieldError] = []
    configs: list[ModelConfigCreate] = []
    for index, item in enumerate(document.data if many else [document.data]):
        where: tuple[str | int, ...] = (index,) if many else ()
        if not isinstance(item, dict):
            problems.append(FieldError(field_name(where) if many else "", "expected a model config (a mapping)"))
            continue
        config = _config(item, where, problems)
        if config is not None:
            configs.append(config)
    if problems:
        raise located(path, document.root, problems)
    return configs


def _config(item: dict[str, Any], where: tuple[str | int, ...], problems: list[FieldError]) -> ModelConfigCreate | None:
    """One full config, checked as the API checks it (fields, then the provider's rules)."""
    try:
        config = ModelConfigCreate.model_validate(item)
    except ValidationError as exc:
        problems.extend(field_errors(exc.errors(include_url=False), where, model=ModelConfigCreate))
        return None
    rules = provider_problems(config)
    problems.extend(FieldError(field_name([*where, *_parts(p.field)]), p.message) for p in rules)
    return None if rules else config


def _configs(items: list[Any], where: str, problems: list[FieldError]) -> list[ModelConfigCreate | str]:
    out: list[ModelConfigCreate | str] = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item:
            out.append(item)
            continue
        if not isinstance(item, dict):
            problems.append(FieldError(field_name([where, index]), "a model config, or the name or id of one"))
            continue
        config = _config(item, (where, index), problems)
        if config is not None:
            out.append(config)
    return out


def located(path: Path, root: yaml.Node | None, problems: list[FieldError]) -> ValidationFailed:
    """The problems, each prefixed with the line of the file its field is on."""
    located = [FieldError(p.field, f"line {_line(root, p.field)}: {p.message}") for p in problems]
    return ValidationFailed(f"{path}: {located[0]}", located)


def _line(root: yaml.Node | None, name: str) -> int:
    """The 1-based line of the deepest node of ``name`` (``a.b[2].c``) that the file has."""
    node = root
    line = (node.start_mark.line + 1) if node is not None else 1
    for part in _parts(name):
        child = _child(node, part)
        if child is None:
            break
        node = child
        line = child.start_mark.line + 1
    return line


def _parts(name: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in name.replace("]", "").replace("[", ".").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if key.value == part:
                return value if isinstance(value, yaml.Node) else None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    return None
