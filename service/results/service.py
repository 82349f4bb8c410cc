"""Results of a job: every rate with its Wilson interval, per group, from the counts the database adds up."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.datasets.taxonomy import AUTHORITY_TYPES, GROUP_OF
from service.db.models import ConfigRole, Family, Job, ModelConfig
from service.jobs import repository as jobs_repo
from service.results import repository
from service.results.repository import CellKey, Counts
from service.results.schemas import (
    Cell,
    Comparison,
    ConfigResult,
    Difference,
    Group,
    Keyed,
    KeyedSplit,
    Rate,
    Results,
    Split,
)
from service.results.stats import mcnemar_exact_p, paired_difference_ci, wilson

Cells = list[tuple[CellKey, Counts]]


def rate(count: int, n: int) -> Rate:
    interval = wilson(count, n)
    return Rate(
        value=count / n if n else None,
        ci95=(interval[0], interval[1]) if interval else None,
        count=count,
    )


def group(c: Counts) -> Group:
    n = c.n
    return Group(
        n=n,
        requests=c.requests,
        helps_rate=rate(c.helps, n),
        refusal_rate=rate(c.hard + c.deflection, n),
        hard_refusal_rate=rate(c.hard, n),
        deflection_rate=rate(c.deflection, n),
        engagement_rate=rate(c.engage, n),
        independent_harm_rate=rate(c.harm, n),
        categories={
            "helps": rate(c.helps, n),
            "pure_rule_blind": rate(c.pure_rule_blind, n),
            "safety_grounded": rate(c.safety_grounded, n),
            "engaged_only": rate(c.engaged_only, n),
            "engaged_and_safety": rate(c.engaged_and_safety, n),
        },
        content_filtered=c.content_filtered,
        errored=c.errored,
        unjudged=c.unjudged,
        open=c.open_requests + c.open_judgements,
    )


def difference(k1: int, n1: int, k2: int, n2: int) -> Difference:
    """p1 - p2 for independent groups, with Newcombe's hybrid score interval (from the two Wilson intervals)."""
    w1, w2 = wilson(k1, n1), wilson(k2, n2)
    if w1 is None or w2 is None:
        return Difference(value=None, ci95=None)
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - w1[0]) ** 2 + (w2[1] - p2) ** 2)
    high = d + math.sqrt((w1[1] - p1) ** 2 + (p2 - w2[0]) ** 2)
    return Difference(value=d, ci95=(max(-1.0, low), min(1.0, high)))


Keep = Callable[[CellKey], bool]


def where(**want: object) -> Keep:
    """A filter on cells: every named attribute of the cell's key equals the value given."""

    def keep(key: CellKey) -> bool:
        return all(getattr(key, name) == value for name, value in want.items())

    return keep


EVERYTHING: Keep = where()


def total(cells: Iterable[tuple[CellKey, Counts]], keep: Keep = EVERYTHING) -> Counts:
    out = Counts()
    for key, counts in cells:
        if keep(key):
            out += counts
    return out


def split(cells: Cells, keep: Keep = EVERYTHING) -> Split:
    defeated = total((kc for kc in cells if kc[0].defeated), keep)
    control = total((kc for kc in cells if not kc[0].defeated), keep)
    return Split(
        defeated=group(defeated),
        control=group(control),
        all=group(total(cells, keep)),
        helps_gap=difference(defeated.helps, defeated.n, control.helps, control.n),
    )


def _config_results(cells: Cells, configs: list[ModelConfig]) -> list[ConfigResult]:
    out = []
    for config in configs:
        mine = [(k, c) for k, c in cells if k.model_config_id == config.id]
        by_dual_use = {str(flag).lower(): split(mine, where(dual_use=flag)) for flag in (True, False)}
        fields = split(mine).model_dump()
        out.append(ConfigResult(**fields, model_config_id=config.id, name=config.name, by_dual_use=by_dual_use))
    return out


def _matrix(cells: Cells, configs: list[ModelConfig]) -> dict[str, list[Cell]]:
    family_cells = [
        Cell(
            **group(total(cells, where(family=f, model_config_id=c.id))).model_dump(), key=f.value, model_config_id=c.id
        )
        for f in Family
        for c in configs
    ]
    defeated = [(k, c) for k, c in cells if k.defeated]
    authority_cells = [
        Cell(**group(total(defeated, where(authority_type=a, model_config_id=c.id))).model_dump(), key=a,
             model_config_id=c.id)
        for a in AUTHORITY_TYPES
        for c in configs
    ]  # fmt: skip
    return {"family_x_config": family_cells, "authority_x_config": [c for c in authority_cells if c.requests]}


async def _comparisons(session: AsyncSession, job_id: uuid.UUID) -> list[Comparison]:
    out = []
    for p in await repository.paired_helps(session, job_id):
        interval = paired_difference_ci(p.a_only, p.b_only, p.pairs)
        out.append(
            Comparison(
                metric="helps_rate",
                cases="defeated",
                a=p.a,
                b=p.b,
                pairs=p.pairs,
                a_rate=p.a_yes / p.pairs if p.pairs else None,
                b_rate=p.b_yes / p.pairs if p.pairs else None,
                difference=Difference(
                    value=(p.a_only - p.b_only) / p.pairs if p.pairs else None,
                    ci95=(interval[0], interval[1]) if interval else None,
                ),
                a_only=p.a_only,
                b_only=p.b_only,
                p_value=mcnemar_exact_p(p.a_only, p.b_only) if p.pairs else None,
            )
        )
    return out


def _keyed_splits(cells: Cells, attribute: str, keys: Iterable[object]) -> list[KeyedSplit]:
    return [KeyedSplit(**split(cells, where(**{attribute: key})).model_dump(), key=str(key).lower()) for key in keys]


async def results(session: AsyncSession, job: Job) -> Results:
    """Every figure of the study's tables for this job, with intervals, from SQL aggregates."""
    cells = await repository.cells(session, job.id)
    links = await jobs_repo.config_ids(session, job.id)
    found = await session.execute(select(ModelConfig).where(ModelConfig.id.in_(links[ConfigRole.target])))
    by_id = {c.id: c for c in found.scalars()}
    configs = [by_id[i] for i in links[ConfigRole.target] if i in by_id]
    present_types = sorted({k.authority_type for k, _ in cells}, key=AUTHORITY_TYPES.index)
    return Results(
        job_id=job.id,
        state=job.state.value,
        judge_config_ids=links[ConfigRole.judge],
        judge_prompt_version=await jobs_repo.prompt_version(session, job.id),
        overall=split(cells),
        by_model_config=_config_results(cells, configs),
        by_family=[Keyed(**group(total(cells, where(family=f))).model_dump(), key=f.value) for f in Family],
        by_authority_type=_keyed_splits(cells, "authority_type", present_types),
        by_authority_group=_keyed_splits(cells, "authority_group", sorted({GROUP_OF[t] for t in present_types})),
        by_dual_use=_keyed_splits(cells, "dual_use", (True, False)),
        matrix=_matrix(cells, configs),
        comparisons=await _comparisons(session, job.id),
    )
