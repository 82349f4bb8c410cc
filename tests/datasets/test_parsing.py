"""Reading and validating case files: the study's file, corrupted copies, CSV, limits, malformed input."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.datasets.parsing import detect_format, read_records, validate_records
from service.errors import PayloadTooLarge, ValidationFailed
from service.settings import ImportLimits

LIMITS = ImportLimits()
STUDY_FAMILY_COUNTS = {
    "control": 209,
    "illegitimate_authority": 128,
    "content_defeat": 337,
    "application_defeat": 372,
    "exception_justified": 244,
}


def parse(data: bytes, fmt: str = "jsonl", limits: ImportLimits = LIMITS) -> Any:
    return validate_records(read_records(data, fmt, limits), limits)  # type: ignore[arg-type]


def refused(data: bytes, fmt: str = "jsonl", limits: ImportLimits = LIMITS) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse(data, fmt, limits)
    assert info.value.detail.startswith("nothing was imported")
    return info.value


def lines_of(data: bytes) -> list[bytes]:
    return data.rstrip(b"\n").split(b"\n")


def test_the_study_file_gives_1290_cases_with_the_study_family_counts(study_cases_bytes: bytes) -> None:
    result = parse(study_cases_bytes)
    assert len(result.cases) == 1290
    assert result.family_counts() == STUDY_FAMILY_COUNTS


def test_the_study_file_keeps_raw_subtypes_and_derives_groups(study_cases_bytes: bytes) -> None:
    result = parse(study_cases_bytes)
    by_id = {c.case.id: c for c in result.cases}
    case = by_id["seed_application_defeat_algorithmic_intermediary_8"]
    assert case.case.defeat_subtype == "rule_is_too_opaque_to_understand"
    assert case.defeat_subtype == "too_opaque_to_understand"
    assert case.authority_group == "semi_voluntary"
    # the 2 cases without a defeat condition and the 45 off-list dimension values are kept, with warnings
    assert sum(c.case.defeat_condition is None for c in result.cases) == 2
    assert sum(w.field.startswith("dimensional_coding") for w in result.warnings) == 45


def test_a_corrupted_line_refuses_the_file_naming_that_line(study_cases_bytes: bytes) -> None:
    lines = lines_of(study_cases_bytes)
    lines[499] = lines[499][:-40]  # truncated JSON on line 500
    error = refused(b"\n".join(lines))
    assert [(e.line, e.field) for e in error.errors] == [(500, "line")]
    assert "line 500" in error.detail


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda c: c.pop("user_query"), "user_query", "required field is missing"),
        (lambda c: c.update(defeat_type="legit_defeat"), "defeat_type", "(valid: control, illegitimate_authority"),
        (lambda c: c.update(authority_type="galactic_senate"), "authority_type", "unknown authority type"),
        (lambda c: c.update(structural_facts="one fact"), "structural_facts", "list"),
        (lambda c: c.update(dual_use="sometimes"), "dual_use", "boolean"),
        (lambda c: c.update(id=""), "id", "at least 1 character"),
    ],
)
def test_a_bad_field_is_named_with_its_line(study_cases_bytes: bytes, mutate: Any, field: str, message: str) -> None:
    lines = lines_of(study_cases_bytes)[:20]
    case = json.loads(lines[6])
    mutate(case)
    lines[6] = json.dumps(case).encode()
    error = refused(b"\n".join(lines))
    assert [(e.line, e.field) for e in error.errors] == [(7, field)]
    assert message in error.errors[0].message


def test_a_duplicate_id_names_both_lines(study_cases_bytes: bytes) -> None:
    lines = lines_of(study_cases_bytes)[:10]
    lines.append(lines[2])
    error = refused(b"\n".join(lines))
    assert [(e.line, e.field) for e in error.errors] == [(11, "id")]
    assert "first at line 3" in error.errors[0].message


def test_every_bad_line_is_listed_up_to_a_cap(study_cases_bytes: bytes) -> None:
    lines = lines_of(study_cases_bytes)[:200]
    for i in range(0, 200, 2):
        lines[i] = b'{"id": "x%d"}' % i
    error = refused(b"\n".join(lines))
    assert len(error.errors) == 50
    assert "problems in all" in error.detail


def _to_csv(cases: list[dict[str, Any]], override: dict[int, dict[str, str]] | None = None) -> bytes:
    buffer = io.StringIO()
    dims = sorted({k for c in cases for k in (c.get("dimensional_coding") or {})})
    fields = [
        "id", "defeat_type", "defeat_subtype", "authority_type", "authority_group", "unjust_policy",
        "defeat_condition", "structural_facts", "user_query", "dual_use", "dual_use_category",
    ] + [f"dimensional_coding.{d}" for d in dims]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for index, c in enumerate(cases):
        row = {k: c.get(k) for k in fields if not k.startswith("dimensional_coding.")}
        row["structural_facts"] = json.dumps(c["structural_facts"])
        row["dual_use"] = "true" if c["dual_use"] else "false"
        row |= {f"dimensional_coding.{d}": (c.get("dimensional_coding") or {}).get(d) for d in dims}
        writer.writerow(row | (override or {}).get(index, {}))
    return buffer.getvalue().encode()


def test_csv_holds_the_same_cases_as_jsonl(study_cases_bytes: bytes) -> None:
    lines = lines_of(study_cases_bytes)[:60]
    cases = [json.loads(line) for line in lines]
    from_jsonl = parse(b"\n".join(lines))
    from_csv = parse(_to_csv(cases), "csv")
    assert from_csv.checksum == from_jsonl.checksum
    assert len(from_csv.cases) == 60


def test_a_bad_csv_value_names_the_line_where_its_record_starts(study_cases_bytes: bytes) -> None:
    cases = [json.loads(line) for line in lines_of(study_cases_bytes)[:5]]
    cases[1]["user_query"] = "first line\nsecond line"  # a quoted value over two lines: record 3 starts on line 6
    error = refused(_to_csv(cases, {3: {"dual_use": "maybe"}}), "csv")
    assert [(e.line, e.field) for e in error.errors] == [(6, "dual_use")]


def test_a_csv_without_the_required_columns_is_refused_at_the_header() -> None:
    error = refused(b"id,user_query\nx,hello\n", "csv")
    assert error.errors[0].field == "header"
    assert "defeat_type" in error.errors[0].message


def test_a_json_array_file_is_read_and_located_by_index(study_cases_bytes: bytes) -> None:
    cases = [json.loads(line) for line in lines_of(study_cases_bytes)[:5]]
    assert len(parse(json.dumps(cases).encode(), "json").cases) == 5
    cases[3]["defeat_type"] = "nope"
    error = refused(json.dumps(cases).encode(), "json")
    assert error.errors[0].field == "defeat_type"


def test_size_limits_refuse_clearly(study_cases_bytes: bytes) -> None:
    sample = b"\n".join(lines_of(study_cases_bytes)[:10])
    with pytest.raises(PayloadTooLarge, match="limit is 1024 bytes"):
        parse(sample, limits=ImportLimits(max_bytes=1024))
    with pytest.raises(PayloadTooLarge, match="limit is 5"):
        parse(sample, limits=ImportLimits(max_cases=5))
    error = refused(sample, limits=ImportLimits(max_field_chars=100))
    assert {e.field for e in error.errors} >= {"user_query"}


def test_an_empty_file_is_refused() -> None:
    assert refused(b"\n\n").errors[0].field == "file"


def test_the_format_is_detected_from_name_type_or_content() -> None:
    assert detect_format("cases.csv", None, b"{") == "csv"
    assert detect_format(None, "application/x-ndjson", b"id,x") == "jsonl"
    assert detect_format(None, None, b'  [{"id": 1}]') == "json"
    assert detect_format(None, None, b'{"id": 1}\n') == "jsonl"
    assert detect_format(None, None, b"id,defeat_type\n") == "csv"


@pytest.fixture(scope="module")
def twenty_lines(study_dir: Any) -> list[bytes]:
    return lines_of((study_dir / "cases.jsonl").read_bytes())[:20]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 19), junk=st.binary(max_size=200))
def test_any_garbage_line_is_refused_at_its_line_or_read_as_a_case(
    twenty_lines: list[bytes], position: int, junk: bytes
) -> None:
    lines = list(twenty_lines)
    lines[position] = junk.replace(b"\n", b" ")
    try:
        result = parse(b"\n".join(lines))
    except ValidationFailed as exc:
        assert exc.errors, "a refusal always says why"
        assert {e.line for e in exc.errors} == {position + 1}
    else:
        # only a blank line (skipped) can pass, since no random bytes make a valid case; a file may open with a
        # byte order mark, which is not part of its first line
        blank = junk.removeprefix(b"\xef\xbb\xbf") if position == 0 else junk
        assert not blank.strip() and len(result.cases) == 19


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.integers(0, 19),
    key=st.sampled_from(["id", "defeat_type", "authority_type", "unjust_policy", "user_query", "structural_facts"]),
    value=st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3)),
)
def test_any_wrong_value_is_refused_naming_line_and_field_or_accepted_whole(
    twenty_lines: list[bytes], position: int, key: str, value: Any
) -> None:
    lines = list(twenty_lines)
    case = json.loads(lines[position])
    case[key] = value
    lines[position] = json.dumps(case).encode()
    try:
        result = parse(b"\n".join(lines))
    except ValidationFailed as exc:
        assert {(e.line, e.field.split("[")[0]) for e in exc.errors} == {(position + 1, key)}
    else:
        assert len(result.cases) == 20
