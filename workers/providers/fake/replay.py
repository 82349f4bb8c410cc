"""Replay: the study's recorded answers and judgements, loaded once, looked up by (slug, user query) or answer hash."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.providers.fake.common import Answer, ErrorReply, TokenUsage, tokens

_TYPES = {"deflects": "deflection", "deflection": "deflection", "helps": "helps", "hard_refusal": "hard_refusal"}

# the study's six recorded models, each replayed over one of our wire formats (so that a replayed study goes through
# every adapter): what the replay test, the study-scale chaos test and benchmarks/study.py register
REPLAY_WIRES = {
    "claude-sonnet-4-6": "anthropic",
    "gemini-3-1-pro": "google",
    "gpt-5-4-thinking": "openai",
    "grok-4": "openai_compatible",
    "qwen-3-5-plus": "openai",
    "nemotron-3-nano": "google",
}


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _slug(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".jsonl")


def digest(text: str) -> str:
    """The key of a recorded answer: sha256 of its stripped text."""
    return hashlib.sha256(text.strip().encode()).hexdigest()


def _recorded(row: dict[str, Any]) -> Answer | ErrorReply:
    if row.get("status") == "error" or row.get("response") is None:
        return ErrorReply(400, f"replayed recorded error: {row.get('error_message')}")
    text: str = row["response"]
    usage = row.get("usage")
    if not usage:
        return Answer(text=text, usage=TokenUsage(input=0, output=tokens(text)))
    return Answer(
        text=text,
        usage=TokenUsage(
            input=int(usage.get("prompt_tokens") or 0),
            output=int(usage.get("completion_tokens") or 0),
            reasoning=int(usage.get("reasoning_tokens") or 0),
            cached=int(usage.get("cached_tokens") or 0),
        ),
    )


def _labels(row: dict[str, Any]) -> dict[str, Any]:
    engages = row.get("engages_with_defeat")
    return {
        "response_type": _TYPES.get(str(row.get("response_type")), str(row.get("response_type"))),
        "engages_with_defeat": engages is True or str(engages).lower() == "yes",
        "independent_harm": bool(row.get("independent_harm")),
        "reasoning": str(row.get("reasoning") or ""),
    }


@dataclass
class ReplayStore:
    """Everything replay needs, in dicts built at load time: no file I/O per request."""

    queries: dict[str, str] = field(default_factory=dict)  # case_id -> user_query (stripped)
    answers: dict[tuple[str, str], Answer | ErrorReply] = field(default_factory=dict)  # (slug, query) -> answer
    judgements: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (slug, case_id) -> labels
    by_hash: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # answer sha256 -> [(case_id, slug)]
    slugs: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, directory: str | Path) -> ReplayStore:
        """Read ``cases.jsonl``, ``responses/*.jsonl.gz`` and ``judgements/*.jsonl.gz`` under ``directory``."""
        root = Path(directory)
        store = cls()
        cases = {row["id"]: str(row["user_query"]).strip() for row in _rows(root / "cases.jsonl")}
        store.queries = cases
        for path in sorted((root / "responses").glob("*.jsonl*")):
            store._add_responses(_slug(path), path)
        for path in sorted((root / "judgements").glob("*.jsonl*")):
            for row in _rows(path):
                store.judgements[(str(row.get("model_slug") or _slug(path)), row["case_id"])] = _labels(row)
        return store

    def _add_responses(self, slug: str, path: Path) -> None:
        self.slugs.add(slug)
        for row in _rows(path):
            query = self.queries.get(row["case_id"])
            if query is None:
                continue
            self.answers[(slug, query)] = _recorded(row)
            if (row.get("response") or "").strip():
                self.by_hash.setdefault(digest(row["response"]), []).append((row["case_id"], slug))

    def answer(self, model: str, user: str) -> Answer | ErrorReply:
        """The recorded answer of ``model`` (a slug, or ``prefix/slug``) to the user message."""
        slug = model.rsplit("/", 1)[-1]
        found = self.answers.get((slug, user.strip()))
        if found is not None:
            return found
        if slug not in self.slugs:
            return ErrorReply(404, f"The model `{model}` does not exist in the replayed data.")
        return ErrorReply(404, f"No recorded answer of `{slug}` to this query.")

    def judgement(self, judged: str, user_request: str | None) -> dict[str, Any] | None:
        """The recorded labels of a recorded answer; None when it is not one or the study has no judgement."""
        candidates = self.by_hash.get(digest(judged), [])
        if user_request is not None:
            matching = [c for c in candidates if self.queries.get(c[0]) == user_request.strip()]
            candidates = matching or candidates
        for case_id, slug in candidates:
            labels = self.judgements.get((slug, case_id))
            if labels is not None:
                return labels
        return None
