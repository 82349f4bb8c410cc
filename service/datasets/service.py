"""Importing datasets (all or nothing) and keeping the built-in starter dataset present."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import resources

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.datasets import repository
from service.datasets.parsing import ValidatedCases, read_records, validate_records
from service.db.models import Dataset
from service.errors import Conflict, FieldError, NotFound, unknown_value
from service.settings import ImportLimits

STARTER_NAME = "starter"
# case ids are stable per dataset: the same case in the same dataset always has the same uuid
_CASE_NAMESPACE = uuid.UUID("5d7f9a0e-3c55-4c11-9f0e-2a8f2b9d6e01")


@dataclass(frozen=True)
class ImportOutcome:
    dataset: Dataset
    created: bool


async def import_cases(
    session: AsyncSession,
    validated: ValidatedCases,
    *,
    name: str,
    version: str | None = None,
    description: str | None = None,
    builtin: bool = False,
) -> ImportOutcome:
    """Store a validated dataset; the same name, version and cases again returns the existing one.

    Flushes only: the caller's request or command commits, so a failure leaves nothing behind.
    """
    checksum = validated.checksum
    version = version or checksum[:12]
    existing = await repository.get_by_name(session, name, version)
    if existing is not None:
        return _same_or_conflict(existing, checksum)
    dataset = Dataset(
        id=uuid.uuid4(),
        name=name,
        version=version,
        description=description,
        checksum=checksum,
        case_count=len(validated.cases),
        builtin=builtin,
    )
    try:
        async with session.begin_nested():
            session.add(dataset)
            await session.flush()
            await repository.insert_cases(session, _case_rows(dataset.id, validated))
    except IntegrityError:
        # a concurrent import of the same name and version won the race
        existing = await repository.get_by_name(session, name, version)
        if existing is None:
            raise
        return _same_or_conflict(existing, checksum)
    return ImportOutcome(dataset, created=True)


def _same_or_conflict(existing: Dataset, checksum: str) -> ImportOutcome:
    if existing.checksum == checksum:
        return ImportOutcome(existing, created=False)
    raise Conflict(
        f"dataset {existing.name!r} version {existing.version!r} exists with other cases",
        [FieldError("version", "already used for different cases; choose another version or omit it")],
    )


def _case_rows(dataset_id: uuid.UUID, validated: ValidatedCases) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for ordinal, item in enumerate(validated.cases):
        c = item.case
        rows.append(
            {
                "id": uuid.uuid5(_CASE_NAMESPACE, f"{dataset_id}:{c.id}"),
                "dataset_id": dataset_id,
                "ordinal": ordinal,
                "external_id": c.id,
                "family": c.defeat_type,
                "defeat_subtype_raw": c.defeat_subtype,
                "defeat_subtype": item.defeat_subtype,
                "authority_type": c.authority_type,
                "authority_group": item.authority_group,
                "unjust_policy": c.unjust_policy,
                "defeat_condition": c.defeat_condition,
                "structural_facts": c.structural_facts,
                "user_query": c.user_query,
                "dimensional_coding": c.dimensional_coding,
                "dual_use": c.dual_use,
                "dual_use_category": c.dual_use_category,
                "extra": c.extra,
            }
        )
    return rows


def starter_bytes() -> bytes:
    """The starter dataset as shipped in the package: every file under ``starter/``, in name order."""
    folder = resources.files("service.datasets").joinpath("starter")
    parts = sorted((p for p in folder.iterdir() if p.name.endswith(".jsonl")), key=lambda p: p.name)
    return b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in parts)


def load_starter(limits: ImportLimits | None = None) -> ValidatedCases:
    limits = limits or ImportLimits()
    return validate_records(read_records(starter_bytes(), "jsonl", limits), limits)


async def ensure_starter(session: AsyncSession) -> Dataset:
    """Make sure the shipped starter dataset is in the ledger (a new release adds its new version)."""
    outcome = await import_cases(
        session,
        load_starter(),
        name=STARTER_NAME,
        description="Defeater's own starter cases: every populated family x authority cell of the study.",
        builtin=True,
    )
    return outcome.dataset


async def resolve(session: AsyncSession, ref: str) -> Dataset:
    """A dataset by id, ``name`` (its most recently imported version) or ``name@version``.

    An unknown one is a ``NotFound`` that names the closest dataset (or version) and the others.
    """
    dataset: Dataset | None
    try:
        dataset = await repository.get(session, uuid.UUID(ref))
    except ValueError:
        name, _, version = ref.partition("@")
        dataset = await repository.get_by_name(session, name, version or None)
    if dataset is None:
        message = await _unknown(session, ref)
        raise NotFound(message, [FieldError("dataset", message)])
    return dataset


async def _unknown(session: AsyncSession, ref: str) -> str:
    name, at, version = ref.partition("@")
    known = await repository.names(session)
    if at and name in known:
        return f"dataset {name!r}: " + unknown_value("version", version, await repository.versions(session, name))
    return unknown_value("dataset", ref, known)
