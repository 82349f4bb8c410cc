"""Reading case files (JSONL, JSON, CSV) and validating cases, all-or-nothing, naming line and field."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from service.bounds import TOO_DEEP, json_problem
from service.datasets.schemas import CaseIn, ImportWarning
from service.datasets.taxonomy import DIMENSIONS, DUAL_USE_CATEGORIES, GROUP_OF, normalise_subtype
from service.errors import FieldError, PayloadTooLarge, ValidationFailed, field_name, validation_message
from service.settings import ImportLimits

FileFormat = Literal["jsonl", "json", "csv"]
MAX_REPORTED_ERRORS = 50
MAX_REPORTED_WARNINGS = 200
KNOWN_FIELDS = frozenset(CaseIn.model_fields) - {"extra"}
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f", ""})


@dataclass(frozen=True)
class RawRecord:
    """One case as read from the input, before validation; ``line`` is its first line in a file."""

    data: Any
    line: int | None
    index: int


@dataclass(frozen=True)
class ValidCase:
    """A validated case with the values the ledger derives from it."""

    case: CaseIn
    authority_group: str
    defeat_subtype: str | None
    line: int | None


@dataclass
class ValidatedCases:
    cases: list[ValidCase]
    warnings: list[ImportWarning] = field(default_factory=list)
    warning_count: int = 0

    @property
    def checksum(self) -> str:
        """sha256 of the cases' canonical JSON, in order: the same cases give the same checksum."""
        digest = hashlib.sha256()
        for c in self.cases:
            digest.update(json.dumps(c.case.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def family_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.cases:
            counts[c.case.defeat_type.value] = counts.get(c.case.defeat_type.value, 0) + 1
        return counts


class _Errors:
    """Collects field errors up to a cap; ``raise_if_any`` refuses the whole import."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []
        self.total = 0

    def add(self, field_name: str, message: str, line: int | None = None) -> None:
        self.total += 1
        if len(self.items) < MAX_REPORTED_ERRORS:
            self.items.append(FieldError(field_name, message, line))

    def raise_if_any(self) -> None:
        if not self.total:
            return
        first = self.items[0]
        more = f" ({self.total} problems in all, {len(self.items)} listed)" if self.total > 1 else ""
        raise ValidationFailed(f"nothing was imported: {first}{more}", self.items)


def detect_format(filename: str | None, content_type: str | None, data: bytes) -> FileFormat:
    """Pick the parser from the file name, then the media type, then the first character."""
    name = (filename or "").lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    if name.endswith((".jsonl", ".ndjson")) or ctype in ("application/x-ndjson", "application/jsonl"):
        return "jsonl"
    if name.endswith(".csv") or ctype in ("text/csv", "application/csv"):
        return "csv"
    if name.endswith(".json"):
        return "json"
    head = data.lstrip()[:1]
    if head == b"[":
        return "json"
    return "jsonl" if head == b"{" else "csv"


def read_records(data: bytes, fmt: FileFormat, limits: ImportLimits) -> list[RawRecord]:
    """Split a file into raw records, refusing it whole at the first line that cannot be read."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the file is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    records = {"jsonl": _read_jsonl, "json": _read_json_array, "csv": _read_csv}[fmt](data)
    out = list(records)
    if not out:
        raise ValidationFailed("nothing was imported: the file holds no cases", [FieldError("file", "no cases")])
    if len(out) > limits.max_cases:
        raise PayloadTooLarge(f"the file holds {len(out)} cases; the limit is {limits.max_cases}")
    return out


def _read_jsonl(data: bytes) -> Iterator[RawRecord]:
    index = 0
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            value = json.loads(raw_line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _unreadable(number, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise _unreadable(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
        except RecursionError as exc:
            raise _unreadable(number, TOO_DEEP) from exc
        yield RawRecord(value, number, index)
        index += 1


def _read_json_array(data: bytes) -> Iterator[RawRecord]:
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _unreadable(data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise _unreadable(exc.lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise _unreadable(1, TOO_DEEP) from exc
    if isinstance(value, dict) and isinstance(value.get("cases"), list):
        value = value["cases"]
    if not isinstance(value, list):
        raise _unreadable(1, "a JSON file must hold an array of cases (or an object with a 'cases' array)")
    for index, item in enumerate(value):
        yield RawRecord(item, None, index)


def _read_csv(data: bytes) -> Iterator[RawRecord]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _unreadable(data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        missing = [f for f in ("id", "defeat_type", "authority_type", "user_query") if f not in header]
        if missing:
            raise _unreadable(1, f"the header lacks the column(s) {', '.join(missing)}", field_name="header")
        start = reader.line_num + 1
        for index, row in enumerate(reader):
            if None in row:
                raise _unreadable(start, "more values than header columns")
            yield RawRecord(_csv_row_to_case(row, start), start, index)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _unreadable(reader.line_num, f"not valid CSV ({exc})") from exc


def _csv_row_to_case(row: dict[str, str | None], line: int) -> dict[str, Any]:
    """Turn a CSV row into the JSON shape: lists and objects as JSON or flattened columns, booleans as words."""
    case: dict[str, Any] = {}
    coding: dict[str, Any] = {}
    for key, value in row.items():
        value = (value or "").strip()
        if key.startswith("dimensional_coding."):
            coding[key.split(".", 1)[1]] = value or None
        elif key == "structural_facts":
            case[key] = _csv_list(value, line)
        elif key == "dimensional_coding":
            if value:
                coding.update(_csv_json(value, key, line))
        elif key == "dual_use":
            case[key] = _csv_bool(value, line)
        elif value:
            case[key] = value
    if coding:
        case["dimensional_coding"] = coding
    return case


def _csv_list(value: str, line: int) -> Any:
    if value.startswith("["):
        return _csv_json(value, "structural_facts", line)
    return [part.strip() for part in value.split("|") if part.strip()]


def _csv_json(value: str, field_name: str, line: int) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise _unreadable(line, f"not valid JSON ({exc.msg})", field_name=field_name) from exc
    except RecursionError as exc:
        raise _unreadable(line, TOO_DEEP, field_name=field_name) from exc


def _csv_bool(value: str, line: int) -> bool:
    word = value.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _unreadable(line, f"{value!r} is not a boolean (true/false)", field_name="dual_use")


def _unreadable(line: int, message: str, field_name: str = "line") -> ValidationFailed:
    error = FieldError(field_name, message, line)
    return ValidationFailed(f"nothing was imported: {error}", [error])


def _loc(prefix: str, loc: Iterable[int | str]) -> str:
    return field_name([*([prefix] if prefix else []), *loc])


def validate_records(records: list[RawRecord], limits: ImportLimits, prefix: str = "") -> ValidatedCases:
    """Validate every record; refuse them all (ValidationFailed naming line and field) if any is wrong."""
    errors = _Errors()
    valid: list[ValidCase] = []
    warnings: list[ImportWarning] = []
    first_seen: dict[str, str] = {}
    for record in records:
        where = prefix if record.line is not None else (f"{prefix}[{record.index}]" if prefix else "")
        case = _validate_one(record, where, limits, errors)
        if case is None:
            continue
        place = f"line {record.line}" if record.line is not None else f"case {record.index}"
        if case.id in first_seen:
            errors.add(_loc(where, ["id"]), f"duplicate id {case.id!r} (first at {first_seen[case.id]})", record.line)
            continue
        first_seen[case.id] = place
        warnings.extend(_warnings_for(case, record.line))
        valid.append(
            ValidCase(
                case,
                GROUP_OF[case.authority_type],
                normalise_subtype(case.defeat_type, case.defeat_subtype),
                record.line,
            )
        )
    errors.raise_if_any()
    return ValidatedCases(valid, warnings[:MAX_REPORTED_WARNINGS], len(warnings))


def _validate_one(record: RawRecord, where: str, limits: ImportLimits, errors: _Errors) -> CaseIn | None:
    if not isinstance(record.data, dict):
        errors.add(where or "case", "a case must be a JSON object", record.line)
        return None
    problem = json_problem(record.data)  # NUL characters and runaway nesting, before validation reads them
    if problem is not None:
        errors.add(_loc(where, [problem.field] if problem.field != "body" else []), problem.message, record.line)
        return None
    known = {k: v for k, v in record.data.items() if k in KNOWN_FIELDS}
    extra = {k: v for k, v in record.data.items() if k not in KNOWN_FIELDS}
    try:
        case = CaseIn.model_validate({**known, "extra": extra or None})
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            errors.add(_loc(where, err["loc"]), validation_message(err), record.line)
        return None
    too_long = [
        name
        for name in ("user_query", "unjust_policy", "defeat_condition")
        if len(getattr(case, name) or "") > limits.max_field_chars
    ]
    for name in too_long:
        errors.add(_loc(where, [name]), f"longer than {limits.max_field_chars} characters", record.line)
    return None if too_long else case


def _warnings_for(case: CaseIn, line: int | None) -> Iterator[ImportWarning]:
    def warn(field_name: str, message: str) -> ImportWarning:
        return ImportWarning(line=line, case_id=case.id, field=field_name, message=message)

    derived = GROUP_OF[case.authority_type]
    if case.authority_group and case.authority_group != derived:
        yield warn("authority_group", f"given {case.authority_group!r}; kept {derived!r} from the taxonomy")
    if normalise_subtype(case.defeat_type, case.defeat_subtype) is None:
        yield warn("defeat_subtype", f"{case.defeat_subtype!r} matches no canonical subtype; normalised to null")
    for key, value in (case.dimensional_coding or {}).items():
        allowed = DIMENSIONS.get(key)
        if allowed is None:
            yield warn(f"dimensional_coding.{key}", "not one of the seven dimensions")
        elif value not in allowed:
            yield warn(f"dimensional_coding.{key}", f"{value!r} is not on the list for {key}")
    if case.dual_use_category and case.dual_use_category not in DUAL_USE_CATEGORIES:
        yield warn("dual_use_category", f"{case.dual_use_category!r} is not a known dual-use category")
