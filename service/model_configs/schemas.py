"""Model config schemas, validated per provider, and their canonical fingerprints."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from service.db.models.enums import Provider
from service.errors import FieldError

OPENAI_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ANTHROPIC_THINKING: Final = ("disabled", "adaptive", "low", "medium", "high", "max")
GEMINI_LEVELS: Final = ("minimal", "low", "medium", "high")
DEFAULT_MAX_TOKENS: Final = 8_000
DEFAULT_KEY_ENV: Final[dict[Provider, str | None]] = {
    Provider.openai: "OPENAI_API_KEY",
    Provider.anthropic: "ANTHROPIC_API_KEY",
    Provider.google: "GEMINI_API_KEY",
    Provider.openai_compatible: None,
}
# names that say "a credential", compared without case, "-" or "_": refused as a key at any depth of a config, whole
# or as the end of a name (client_secret, x-api-key, access_token). Whole names and these endings only: max_tokens,
# a max_token typo, stop_token_ids and prompt_cache_key are parameters, not secrets.
_SECRET_NAMES: Final = frozenset(
    {"key", "token", "auth", "authorization", "bearer", "cookie", "credential", "credentials", "passwd"}
)
_SECRET_SUFFIXES: Final = (
    "apikey", "secret", "password", "secretkey", "accesskey", "privatekey", "authorization",
    "accesstoken", "authtoken", "apitoken", "bearertoken", "refreshtoken", "sessiontoken",
)  # fmt: skip
_NO_KEYS: Final = (
    "refused: keys are never stored. Put the key in an environment variable or secret and give that "
    "variable's name in api_key_env"
)


class Params(BaseModel):
    """What shapes the model's answers. Which fields a provider takes is checked on the config."""

    model_config = ConfigDict(extra="forbid")

    temperature: StrictFloat | None = Field(default=None, ge=0, le=2)
    max_tokens: StrictInt = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=1_000_000)
    top_p: StrictFloat | None = Field(default=None, gt=0, le=1)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    # strict: JSON's false is no thinking budget (pydantic would read it as 0)
    reasoning: str | StrictInt | None = Field(
        default=None,
        description=(
            "openai / openai_compatible: an effort (none..max); anthropic: disabled, adaptive, or an effort "
            "(low..max) for adaptive thinking, or a thinking budget in tokens; google: a thinking level "
            "(minimal..high) or a thinking budget in tokens (-1 automatic, 0 off)"
        ),
    )
    api: Literal["chat", "responses"] | None = Field(
        default=None, description="openai / openai_compatible: Chat Completions (default) or the Responses API"
    )
    extra_body: dict[str, Any] | None = Field(
        default=None, description="extra JSON fields sent as they are (OpenAI-compatible and Anthropic only)"
    )


class Limits(BaseModel):
    """How hard this config may be driven. Not part of the fingerprint: limits do not change answers."""

    model_config = ConfigDict(extra="forbid")

    rpm: StrictInt | None = Field(default=None, ge=1, le=10_000_000)
    tpm: StrictInt | None = Field(default=None, ge=1, le=10_000_000_000)
    max_concurrency: StrictInt | None = Field(default=None, ge=1, le=100_000)


class ModelConfigCreate(BaseModel):
    """A model config to register. ``api_key_env`` names the variable that holds the key: never the key."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
    provider: Provider
    model: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    base_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://\S+$")
    api_key_env: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    params: Params = Field(default_factory=Params)
    limits: Limits = Field(default_factory=Limits)

    # present only to refuse it with a message naming the field; never stored, never in the schema
    api_key: SkipJsonSchema[None] = Field(default=None, exclude=True)

    @model_validator(mode="wrap")
    @classmethod
    def _no_secrets(cls, data: Any, handler: ModelWrapValidatorHandler[ModelConfigCreate]) -> ModelConfigCreate:
        """A secret-looking key anywhere in the body (``api_key``, ``params.extra_body.headers.Authorization``) is
        refused, each naming its full path, before anything else is read: keys are never stored or shown."""
        found = secret_paths(data)
        if found:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [{"type": PydanticCustomError("secret", _NO_KEYS), "loc": loc, "input": "<hidden>"} for loc in found],
            )
        return handler(data)

    @model_validator(mode="after")
    def _defaults(self) -> ModelConfigCreate:
        if self.base_url:
            self.base_url = self.base_url.rstrip("/")
        if self.api_key_env is None:
            self.api_key_env = DEFAULT_KEY_ENV[self.provider]
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes the model's output: provider, model, endpoint, params."""
        return _digest(
            {
                "provider": self.provider.value,
                "model": self.model,
                "base_url": self.base_url,
                "params": self.params.model_dump(exclude_none=True),
            }
        )

    def definition_hash(self) -> str:
        """Hash of the whole registration: the same body posted again finds the same config."""
        return _digest(self.model_dump(mode="json", exclude_none=True))


def is_secret_name(name: str) -> bool:
    """Whether a key's name says it holds a credential (``api_key``, ``X-Api-Key``, ``Authorization``, ``token``)."""
    bare = "".join(ch for ch in name.lower() if ch.isalnum())
    return bare in _SECRET_NAMES or bare.endswith(_SECRET_SUFFIXES)


def _children(node: Any) -> list[tuple[str | int, Any]]:
    if isinstance(node, dict):
        return list(node.items())
    return list(enumerate(node)) if isinstance(node, list) else []


def secret_paths(value: Any) -> list[tuple[str | int, ...]]:
    """The path of every secret-looking key in a JSON value, at any depth (a loop, not recursion: a body nested
    thousands deep is answered, not a RecursionError)."""
    found: list[tuple[str | int, ...]] = []
    # each path a linked list (parent, key), spelt out only when a secret is found: deep nesting stays linear
    stack: list[tuple[Any, Any]] = [(None, value)]
    while stack:
        path, node = stack.pop()
        for key, child in reversed(_children(node)):
            if isinstance(key, str) and is_secret_name(key):
                found.append(_spelt((path, key)))
            else:
                stack.append(((path, key), child))
    return found


def _spelt(path: Any) -> tuple[str | int, ...]:
    keys: list[str | int] = []
    while path is not None:
        path, key = path
        keys.append(key)
    return tuple(reversed(keys))


def hide_secrets(value: Any) -> Any:
    """A copy of a JSON value with every secret-looking key's value replaced by ``<hidden>`` (configs stored before
    such keys were refused at any depth are shown without them)."""
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        node = parent[key]
        if isinstance(node, dict | list):
            copy: Any = dict(node) if isinstance(node, dict) else list(node)
            parent[key] = copy
            for child_key, _ in _children(copy):
                if isinstance(child_key, str) and is_secret_name(child_key):
                    copy[child_key] = "<hidden>"
                else:
                    stack.append((copy, child_key))
    return root[0]


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def provider_problems(config: ModelConfigCreate) -> list[FieldError]:
    """What in the config this provider's SDK or API would refuse, each naming its field."""
    p, provider = config.params, config.provider
    problems: list[FieldError] = []
    if provider is Provider.openai_compatible and not config.base_url:
        problems.append(FieldError("base_url", "required for openai_compatible (e.g. https://openrouter.ai/api/v1)"))
    if provider is Provider.anthropic:
        for name in ("temperature", "top_p"):
            if getattr(p, name) is not None:
                problems.append(
                    FieldError(
                        f"params.{name}",
                        f"not accepted for anthropic: the Anthropic SDK 2.x removed {name} from messages.create "
                        "and current models reject it; omit it (an older model that still takes it can get it "
                        f"through params.extra_body.{name})",
                    )
                )
    if p.api is not None and provider not in (Provider.openai, Provider.openai_compatible):
        problems.append(FieldError("params.api", "only for openai and openai_compatible"))
    if provider is Provider.google and p.extra_body is not None:
        problems.append(FieldError("params.extra_body", "not supported for provider google"))
    reasoning = _reasoning_problem(provider, p)
    if reasoning:
        problems.append(FieldError("params.reasoning", reasoning))
    return problems


def _reasoning_problem(provider: Provider, p: Params) -> str | None:
    r = p.reasoning
    if r is None:
        return None
    if provider in (Provider.openai, Provider.openai_compatible):
        ok = r in OPENAI_EFFORTS
        return None if ok else f"for {provider.value} an effort, one of {', '.join(OPENAI_EFFORTS)}"
    if provider is Provider.anthropic:
        if isinstance(r, int):
            return None if 1024 <= r < p.max_tokens else "a thinking budget must be >= 1024 and below max_tokens"
        ok = r in ANTHROPIC_THINKING
        return None if ok else f"for anthropic one of {', '.join(ANTHROPIC_THINKING)}, or a thinking budget"
    if isinstance(r, int):
        return None if r >= -1 else "a thinking budget must be -1 (automatic), 0 (off) or more"
    return None if r in GEMINI_LEVELS else f"for google a thinking level, one of {', '.join(GEMINI_LEVELS)}"


class ModelConfigPatch(BaseModel):
    """What may change on a registered config: its limits, merged into the current ones (null removes one).

    Everything else is immutable: an answer is tied to the exact config that produced it.
    """

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    limits: dict[str, int | None] = Field(
        description='e.g. {"rpm": 1200} raises the RPM limit and keeps the others; {"tpm": null} removes one',
        examples=[{"rpm": 1200, "tpm": None}],
    )


class ModelConfigRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    fingerprint: str
    name: str
    provider: Provider
    model: str
    base_url: str | None
    api_key_env: str | None
    params: dict[str, Any]
    limits: dict[str, Any]
    created_at: datetime

    @field_validator("params")
    @classmethod
    def _hidden(cls, value: dict[str, Any]) -> dict[str, Any]:
        hidden: dict[str, Any] = hide_secrets(value)
        return hidden
