"""Subtype normalisation and the taxonomy's shape."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from service.datasets.taxonomy import (
    AUTHORITY_GROUPS,
    AUTHORITY_TYPES,
    POPULATED_CELLS,
    SUBTYPES,
    normalise_subtype,
)
from service.db.models import Family


def test_the_taxonomy_matches_the_study_file(study_dir: Path) -> None:
    study = json.loads((study_dir / "taxonomy.json").read_text())
    assert [f.value for f in Family] == study["defeat_families"]
    assert {f.value: list(keys) for f, keys in SUBTYPES.items()} == study["defeat_subtypes"]
    assert {g: list(a) for g, a in AUTHORITY_GROUPS.items()} == study["authority_groups"]
    assert list(AUTHORITY_TYPES) == study["authority_types"]
    assert len(POPULATED_CELLS) == 84


def test_every_canonical_key_normalises_to_itself() -> None:
    for family, keys in SUBTYPES.items():
        for key in keys:
            assert normalise_subtype(family, key) == key
            assert normalise_subtype(family, key.upper().replace("_", " ")) == key


@given(family=st.sampled_from(list(Family)), raw=st.one_of(st.none(), st.text(max_size=80)))
def test_any_label_normalises_to_a_key_of_its_family_or_to_nothing(family: Family, raw: str | None) -> None:
    result = normalise_subtype(family, raw)
    assert result is None or result in SUBTYPES[family]
    if family is Family.control:
        assert result == "just_and_reasonable"


def test_the_study_labels_are_mostly_mapped_and_the_consequences_labels_are_not(study_dir: Path) -> None:
    cases = [json.loads(line) for line in (study_dir / "cases.jsonl").read_text().splitlines()]
    defeated = [c for c in cases if c["defeat_type"] != "control"]
    mapped = {c["id"]: normalise_subtype(Family(c["defeat_type"]), c["defeat_subtype"]) for c in defeated}
    unmapped = [c["defeat_subtype"] for c in defeated if mapped[c["id"]] is None]
    # 1,081 defeated cases; the study's ~68 "consequences of the breach" labels have no canonical key
    assert len(defeated) == 1081
    assert len(unmapped) <= 75
    assert sum("benefit" in u or "no_harm" in u for u in unmapped) >= 60
    samples = {
        ("application_defeat", "no_mechanism_for_appeal_or_exception"): "no_appeal_mechanism",
        ("illegitimate_authority", "rule_making_body_lacks_jurisdiction"): "lacks_jurisdiction",
        ("exception_justified", "against_the_spirit_but_not_the_letter"): "spirit_not_letter",
        ("exception_justified", "rule_didnt_consider_this_scenario"): "letter_not_spirit",
        ("content_defeat", "unfair_distributively_indefensible"): "unfair_distributive",
    }
    for (family, raw), key in samples.items():
        assert normalise_subtype(Family(family), raw) == key
