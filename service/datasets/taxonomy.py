"""The Blind Refusal taxonomy: families, canonical subtypes, authority types and their groups.

Raw subtype labels in the study's data are free text; ``normalise_subtype`` maps them onto the canonical keys.
"""

from __future__ import annotations

import re
from typing import Final

from service.db.models.enums import Family

TAXONOMY_VERSION: Final = "2026-02-18"

SUBTYPES: Final[dict[Family, tuple[str, ...]]] = {
    Family.control: ("just_and_reasonable",),
    Family.illegitimate_authority: (
        "just_policies_illegitimate_power",
        "unjust_policies_legitimate_power",
        "unjust_policies_illegitimate_power",
        "lacks_jurisdiction",
        "exceeded_delegated_authority",
    ),
    Family.content_defeat: (
        "excessive_personal_costs",
        "substantively_indefensible",
        "unfair_distributive",
        "absurd_or_arbitrary",
        "lacking_coordination",
        "obsolete",
    ),
    Family.application_defeat: (
        "selective_non_enforcement",
        "singled_out_unfairly",
        "unpredictable_application",
        "applied_retroactively",
        "changed_without_notice",
        "no_appeal_mechanism",
        "dead_letter",
        "conflicts_with_higher_rule",
        "impossible_to_comply",
        "too_opaque_to_understand",
    ),
    Family.exception_justified: (
        "letter_not_spirit",
        "spirit_not_letter",
        "both_letter_and_spirit",
        "conscientious_objection",
        "civil_disobedience",
        "collective_breach",
        "never_agreed",
        "lacked_representation",
        "systematically_disadvantaged",
        "temporal_urgency",
        "lack_of_alternatives",
        "factual_uncertainty",
        "no_enforcement_prospect",
    ),
}

AUTHORITY_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "government": ("national_government", "subnational_government", "supranational_body"),
    "non_voluntary": ("family", "tribe"),
    "semi_voluntary": (
        "profession",
        "faith_group",
        "school",
        "housing_association",
        "union",
        "algorithmic_intermediary",
        "military_command",
    ),
    "voluntary": (
        "workplace",
        "club",
        "landlord",
        "creditor_insurer",
        "private_property_owner",
        "contractual_counterparty",
        "delegated_authority",
    ),
}

GROUP_OF: Final[dict[str, str]] = {a: g for g, members in AUTHORITY_GROUPS.items() for a in members}
AUTHORITY_TYPES: Final[tuple[str, ...]] = tuple(GROUP_OF)

# Cells the study leaves empty: implausible illegitimate-authority cells, and control cells with no cases.
EXCLUDED_CELLS: Final[frozenset[tuple[Family, str]]] = frozenset(
    {
        (Family.illegitimate_authority, a)
        for a in (
            "housing_association",
            "union",
            "club",
            "landlord",
            "creditor_insurer",
            "private_property_owner",
            "contractual_counterparty",
        )
    }
    | {
        (Family.control, a)
        for a in ("supranational_body", "tribe", "private_property_owner", "contractual_counterparty")
    }
)

POPULATED_CELLS: Final[tuple[tuple[Family, str], ...]] = tuple(
    (f, a) for f in Family for a in AUTHORITY_TYPES if (f, a) not in EXCLUDED_CELLS
)

DIMENSIONS: Final[dict[str, tuple[str, ...]]] = {
    "kind_of_rule": (
        "law",
        "religious_doctrine",
        "professional_code",
        "institutional_policy",
        "social_norm",
        "custom_tradition",
        "platform_terms",
        "private_property",
        "contract",
    ),
    "harm_to_others": ("none", "diffuse", "concrete_minor", "concrete_significant"),
    "legality": (
        "private_rule",
        "technically_illegal_trivial",
        "illegal_but_unjust",
        "clearly_illegal_enforced",
    ),
    "stakes_if_caught": ("trivial", "moderate", "severe", "existential"),
    "compliance_ecology": ("general_compliance", "widespread_noncompliance", "selective_enforcement"),
    "user_positionality": ("dependent", "constrained", "empowered"),
    "evasion_type": ("technical", "social_behavioral", "procedural_exploitation"),
}

DUAL_USE_CATEGORIES: Final[tuple[str, ...]] = (
    "weapons_explosives",
    "drugs_substances",
    "cybersecurity",
    "financial_fraud",
    "physical_security",
    "biological_chemical",
    "identity_documents",
)

# Phrases seen in free-text labels, each pointing at a canonical subtype of one family. Checked in order;
# the first phrase found in the label wins, so the more specific phrases come first.
_PHRASES: Final[dict[Family, tuple[tuple[str, str], ...]]] = {
    Family.illegitimate_authority: (
        ("unjust_policies_power_acquired_inappropriately", "unjust_policies_illegitimate_power"),
        ("unjust_policies_illegitimate", "unjust_policies_illegitimate_power"),
        ("just_policies_power_acquired_inappropriately", "just_policies_illegitimate_power"),
        ("just_policies_illegitimate", "just_policies_illegitimate_power"),
        ("unjust_policies_power_acquired_appropriately", "unjust_policies_legitimate_power"),
        ("unjust_policies_legitimate", "unjust_policies_legitimate_power"),
        ("jurisdiction", "lacks_jurisdiction"),
        ("exceeded", "exceeded_delegated_authority"),
        ("delegat", "exceeded_delegated_authority"),
    ),
    Family.content_defeat: (
        ("personal_cost", "excessive_personal_costs"),
        ("distributiv", "unfair_distributive"),
        ("substantiv", "substantively_indefensible"),
        ("absurd", "absurd_or_arbitrary"),
        ("arbitrary", "absurd_or_arbitrary"),
        ("coordination", "lacking_coordination"),
        ("obsolete", "obsolete"),
    ),
    Family.application_defeat: (
        ("selective", "selective_non_enforcement"),
        ("singled_out", "singled_out_unfairly"),
        ("nobody_knows", "unpredictable_application"),
        ("unpredictab", "unpredictable_application"),
        ("retroactiv", "applied_retroactively"),
        ("without_adequate_notice", "changed_without_notice"),
        ("without_notice", "changed_without_notice"),
        ("appeal", "no_appeal_mechanism"),
        ("dead_letter", "dead_letter"),
        ("non_enforcement", "dead_letter"),
        ("conflict", "conflicts_with_higher_rule"),
        ("impossible", "impossible_to_comply"),
        ("opaque", "too_opaque_to_understand"),
    ),
    Family.exception_justified: (
        ("both_letter_and_spirit", "both_letter_and_spirit"),
        ("letter_and_spirit", "both_letter_and_spirit"),
        ("spirit_but_not_the_letter", "spirit_not_letter"),
        ("spirit_but_not_letter", "spirit_not_letter"),
        ("spirit_not_letter", "spirit_not_letter"),
        ("letter", "letter_not_spirit"),
        # "the rule did not consider this", "information the rulemakers lacked", "ambiguously phrased": the
        # study's three variants of breaking the letter but not the spirit
        ("didnt_consider", "letter_not_spirit"),
        ("did_not_consider", "letter_not_spirit"),
        ("rulemakers_lacked", "letter_not_spirit"),
        ("ambiguous", "letter_not_spirit"),
        ("conscientious", "conscientious_objection"),
        ("civil_disobedience", "civil_disobedience"),
        ("collective", "collective_breach"),
        ("never_agreed", "never_agreed"),
        ("representation", "lacked_representation"),
        ("disadvantage", "systematically_disadvantaged"),
        ("urgen", "temporal_urgency"),
        ("alternatives", "lack_of_alternatives"),
        ("factual_uncertainty", "factual_uncertainty"),
        ("uncertain", "factual_uncertainty"),
        ("punishment", "no_enforcement_prospect"),
        ("enforcement", "no_enforcement_prospect"),
    ),
}


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def normalise_subtype(family: Family, raw: str | None) -> str | None:
    """The canonical subtype key for a free-text label, or None when it names none of the family's keys.

    Control cases are all ``just_and_reasonable``. The study's "consequences of the breach" labels
    (e.g. ``benefit_to_others_risk_to_self``) are not among the 13 canonical exception subtypes and stay None.
    """
    if family is Family.control:
        return "just_and_reasonable"
    if not raw:
        return None
    slug = _slug(raw)
    if slug in SUBTYPES[family]:
        return slug
    for phrase, key in _PHRASES[family]:
        if phrase in slug:
            return key
    return None
