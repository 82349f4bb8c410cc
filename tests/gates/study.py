"""The study's recorded answers and judge labels as gate evidence, built the way the results' SQL counts them:
an errored call is ``errored``, an answer without a label ``unjudged``, a labelled answer enters the rates."""

from __future__ import annotations

import gzip
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from service.db.models import Family
from service.gates.evidence import Evidence, Label, PairCell
from service.results.repository import CellKey, Counts

_CATEGORY = {
    (False, False): "pure_rule_blind",
    (False, True): "safety_grounded",
    (True, False): "engaged_only",
    (True, True): "engaged_and_safety",
}


@dataclass(frozen=True)
class Case:
    family: Family
    authority_type: str
    dual_use: bool

    def key(self, config_id: uuid.UUID) -> CellKey:
        return CellKey(config_id, self.family, self.authority_type, self.dual_use)


@dataclass(frozen=True)
class Model:
    """One recorded model: the label of each judged answer, and the cases whose call errored."""

    labels: Mapping[str, Label]
    errored: frozenset[str]


@dataclass(frozen=True)
class Study:
    cases: Mapping[str, Case]
    models: Mapping[str, Model]

    @property
    def defeated(self) -> list[str]:
        return sorted(c for c, case in self.cases.items() if case.family is not Family.control)


def _gz_lines(path: Path) -> Iterable[dict[str, object]]:
    with gzip.open(path, "rt") as f:
        yield from (json.loads(line) for line in f)


@cache
def load(study_dir: Path) -> Study:
    cases = {}
    for line in (study_dir / "cases.jsonl").read_text().splitlines():
        row = json.loads(line)
        cases[row["id"]] = Case(Family(row["defeat_type"]), row["authority_type"], bool(row["dual_use"]))
    models = {}
    for path in sorted((study_dir / "judgements").glob("*.jsonl.gz")):
        slug = path.name.removesuffix(".jsonl.gz")
        labels = {
            str(r["case_id"]): Label(
                {"deflects": "deflection"}.get(str(r["response_type"]), str(r["response_type"])),
                r["engages_with_defeat"] == "yes",
                bool(r["independent_harm"]),
            )
            for r in _gz_lines(path)
        }
        errored = frozenset(
            str(r["case_id"]) for r in _gz_lines(study_dir / "responses" / path.name) if r["status"] == "error"
        )
        models[slug] = Model(labels, errored)
    return Study(cases, models)


def _count(counts: Counts, model: Model, case_id: str) -> None:
    counts.requests += 1
    if case_id in model.errored:
        counts.errored += 1
        return
    counts.answers += 1
    label = model.labels.get(case_id)
    if label is None:
        counts.unjudged += 1
        return
    counts.n += 1
    counts.engage += label.engages
    counts.harm += label.harm
    if not label.refused:
        counts.helps += 1
        return
    counts.hard += label.response_type == "hard_refusal"
    counts.deflection += label.response_type == "deflection"
    category = _CATEGORY[label.engages, label.harm]
    setattr(counts, category, getattr(counts, category) + 1)


def evidence(study: Study, case_ids: Iterable[str], configs: Mapping[uuid.UUID, str]) -> Evidence:
    """Counts per cell for each config (a config id -> the recorded model it replays) over the cases, and the
    paired labels of every ordered pair of configs."""
    chosen = list(case_ids)
    cells: dict[CellKey, Counts] = {}
    for config_id, slug in configs.items():
        for case_id in chosen:
            _count(cells.setdefault(study.cases[case_id].key(config_id), Counts()), study.models[slug], case_id)
    pairs: dict[tuple[uuid.UUID, uuid.UUID], list[PairCell]] = {}
    for a, slug_a in configs.items():
        for b, slug_b in configs.items():
            if a != b:
                pairs[(a, b)] = _pair_cells(study, chosen, a, study.models[slug_a], study.models[slug_b])
    return Evidence(list(cells.items()), pairs)


def _pair_cells(study: Study, case_ids: list[str], candidate: uuid.UUID, a: Model, b: Model) -> list[PairCell]:
    tally: Counter[tuple[CellKey, Label, Label]] = Counter()
    for case_id in case_ids:
        la, lb = a.labels.get(case_id), b.labels.get(case_id)
        if la is not None and lb is not None and case_id not in a.errored and case_id not in b.errored:
            tally[(study.cases[case_id].key(candidate), la, lb)] += 1
    return [PairCell(key, la, lb, count) for (key, la, lb), count in tally.items()]
