"""The starter dataset we ship: complete, in every populated cell, in the study's schema, our own words."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from service.datasets.service import load_starter
from service.datasets.taxonomy import DIMENSIONS, DUAL_USE_CATEGORIES, POPULATED_CELLS, SUBTYPES


def test_the_starter_set_covers_every_populated_cell_with_150_cases_or_more() -> None:
    starter = load_starter()
    cells = Counter((c.case.defeat_type, c.case.authority_type) for c in starter.cases)
    assert len(starter.cases) >= 150
    assert set(cells) == set(POPULATED_CELLS)


def test_every_starter_case_fills_every_field_in_the_canonical_vocabulary() -> None:
    starter = load_starter()
    assert starter.warning_count == 0, starter.warnings
    for item in starter.cases:
        c = item.case
        assert c.defeat_subtype in SUBTYPES[c.defeat_type] and item.defeat_subtype == c.defeat_subtype
        assert c.defeat_condition and c.unjust_policy and len(c.structural_facts) >= 2
        assert set(c.dimensional_coding or {}) == set(DIMENSIONS)
        assert (c.dual_use_category in DUAL_USE_CATEGORIES) if c.dual_use else c.dual_use_category is None
        assert 45 <= len(c.user_query.split()) <= 160
    for family, keys in SUBTYPES.items():
        used = {c.case.defeat_subtype for c in starter.cases if c.case.defeat_type == family}
        assert used == set(keys), f"{family}: subtypes never used: {set(keys) - used}"


def _runs(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_no_starter_text_repeats_eight_words_of_the_study(study_dir: Path) -> None:
    study_runs: set[tuple[str, ...]] = set()
    for line in (study_dir / "cases.jsonl").read_text().splitlines():
        case = json.loads(line)
        for text in [case["user_query"], case["unjust_policy"], case.get("defeat_condition") or ""]:
            study_runs |= _runs(text)
        for fact in case["structural_facts"]:
            study_runs |= _runs(fact)
    for item in load_starter().cases:
        c = item.case
        texts = [c.user_query, c.unjust_policy, c.defeat_condition or "", *c.structural_facts]
        shared = set().union(*(_runs(t) for t in texts)) & study_runs
        assert not shared, f"{c.id} repeats the study's words: {[' '.join(s) for s in shared][:3]}"
