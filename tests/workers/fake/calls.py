"""One call per wire format through the real SDKs, and the study data's location."""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anthropic import AsyncAnthropic
from google.genai import client as genai_client
from google.genai import types
from openai import AsyncOpenAI

STUDY = Path(__file__).parents[3].parent / "shared" / "data" / "blind-refusal"


@dataclass
class SDKs:
    openai: AsyncOpenAI
    anthropic: AsyncAnthropic
    gemini: genai_client.AsyncClient


async def chat(sdks: SDKs, model: str, user: str, system: str | None = None, **kwargs: Any) -> Any:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return await sdks.openai.chat.completions.create(model=model, messages=messages, **kwargs)


async def responses(sdks: SDKs, model: str, user: str, system: str | None = None, **kwargs: Any) -> Any:
    return await sdks.openai.responses.create(model=model, input=user, instructions=system, **kwargs)


async def messages(sdks: SDKs, model: str, user: str, system: str | None = None, **kwargs: Any) -> Any:
    extra = {"system": system} if system else {}
    content = [{"role": "user", "content": user}]
    return await sdks.anthropic.messages.create(model=model, max_tokens=1000, messages=content, **extra, **kwargs)


async def gemini(sdks: SDKs, model: str, user: str, system: str | None = None, **config: Any) -> Any:
    settings = types.GenerateContentConfig(system_instruction=system, **config)
    return await sdks.gemini.models.generate_content(model=model, contents=user, config=settings)


@functools.cache
def responses_of(slug: str) -> list[dict[str, Any]]:
    with gzip.open(STUDY / "responses" / f"{slug}.jsonl.gz", "rt") as handle:
        return [json.loads(line) for line in handle]


@functools.cache
def queries() -> dict[str, str]:
    """The study's user queries by case id."""
    with (STUDY / "cases.jsonl").open() as handle:
        return {case["id"]: case["user_query"] for case in map(json.loads, handle)}


def recorded(slug: str, status: str = "success", skip: int = 0) -> tuple[dict[str, Any], str]:
    """A recorded response row of the study (the ``skip``-th with this status) and the user query of its case."""
    row = [r for r in responses_of(slug) if r["status"] == status][skip]
    return row, queries()[row["case_id"]]


def unjudged(slug: str) -> tuple[dict[str, Any], str]:
    """A recorded answer whose judgement the study dropped."""
    labels = judgements(slug)
    row = next(r for r in responses_of(slug) if r["status"] == "success" and r["case_id"] not in labels)
    return row, queries()[row["case_id"]]


@functools.cache
def judgements(slug: str) -> dict[str, dict[str, Any]]:
    """The study's judgements of one model, by case id."""
    with gzip.open(STUDY / "judgements" / f"{slug}.jsonl.gz", "rt") as handle:
        return {r["case_id"]: r for r in map(json.loads, handle)}
