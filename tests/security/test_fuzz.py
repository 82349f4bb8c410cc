"""schemathesis over the whole spec, against the real app served on loopback: no 5xx, and every answer is one the spec
declares (status, content type, body schema; errors as problem+json).

The app runs in a thread of its own (uvicorn on 127.0.0.1, a fresh database migrated for it), with tokens off and
with tokens on, on SQLite and Postgres. It can call nothing off this machine: providers may reach loopback only,
posted jobs are never executed (``run_jobs=False``, no Redis), and no webhook secret is set (a job naming a webhook is
refused). Requests name existing resources too (a config, the starter dataset, a cancelled job), so that their
endpoints are fuzzed past the 404. The examples are capped so that the whole fuzz stays within a few minutes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from service.app import create_app
from service.auth.schemas import TokenCreate
from service.auth.service import create_token
from service.db.session import create_engine, create_sessionmaker
from service.pagination import encode_cursor
from service.settings import AuthSettings, DefaultJudge, ProviderSettings, Settings
from tests.conftest import ROOT, migrated_database

LOOPBACK = ["127.0.0.1", "localhost"]
# examples per operation (fixed: `deterministic` below): the four runs make ~7,700 requests in about a minute
MAX_EXAMPLES = 30


@dataclass
class LiveApi:
    """The API served on a loopback port by a thread of this process, on its own database."""

    backend: str
    tokens: bool
    folder: Path
    base_url: str = ""
    admin_token: str | None = None
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            auth=AuthSettings(required=self.tokens),
            # no generated config may even be stored pointing off this machine, with a key or without
            providers=ProviderSettings(
                allowed_hosts=LOOPBACK, key_hosts={"FAKE_PROVIDER_KEY": LOOPBACK}, keyless_hosts=LOOPBACK
            ),
            webhook_secret=None,
            # the judge a job gets when it names none: on loopback too (jobs are not run here, but stored)
            default_judge=DefaultJudge(base_url="http://127.0.0.1:9/v1", api_key_env="FAKE_PROVIDER_KEY"),
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self.error is not None:
            raise RuntimeError("the API did not start") from self.error

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

    async def _serve(self) -> None:
        try:
            async with migrated_database(self.backend, self.folder) as url:
                settings = self.settings(url)
                if self.tokens:
                    self.admin_token = await _issue_admin(settings)
                app = create_app(settings, run_jobs=False)
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
                config = uvicorn.Config(app, log_level="warning", lifespan="on")
                self._server = uvicorn.Server(config)
                serving = asyncio.create_task(self._server.serve(sockets=[sock]))
                while not self._server.started and not serving.done():
                    await asyncio.sleep(0.05)
                self._ready.set()
                await serving
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise


async def _issue_admin(settings: Settings) -> str:
    engine = create_engine(settings, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            issued = await create_token(session, TokenCreate(name="fuzz-admin", scopes=["admin"]))
            await session.commit()
            return issued.plaintext
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Known:
    """Ids of resources that exist, for path parameters."""

    config_id: str
    dataset_id: str
    job_id: str
    token_id: str | None


def _seed(api: LiveApi) -> Known:
    headers = {"Authorization": f"Bearer {api.admin_token}"} if api.admin_token else {}
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=30) as http:
        body = {"name": "fuzzed", "provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                "api_key_env": "FAKE_PROVIDER_KEY"}  # fmt: skip
        config = http.post("/v1/model-configs", json=body).json()
        starter = next(d for d in http.get("/v1/datasets").json()["items"] if d["name"] == "starter")
        body = {"dataset_id": starter["id"], "model_config_ids": [config["id"]]}
        job = http.post("/v1/jobs", json=body).json()
        # a final job: its event stream ends at once (a queued one's would never end, no job runs here)
        assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        token_id = None
        if api.tokens:
            token_id = http.post("/v1/tokens", json={"name": "revocable", "scopes": ["read"]}).json()["id"]
    return Known(config["id"], starter["id"], job["id"], token_id)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fuzz_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=[False, True], ids=["tokens-off", "tokens-on"])
def live_api(
    request: pytest.FixtureRequest, fuzz_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveApi, Known]]:
    api = LiveApi(fuzz_backend, bool(request.param), tmp_path_factory.mktemp("fuzz"))
    api.start()
    try:
        yield api, _seed(api)
    finally:
        api.stop()


KNOWN = "known"  # a path parameter to be replaced by the id of a resource the fixture made
RESOURCES = ("config_id", "dataset_id", "job_id", "token_id")
schema = schemathesis.openapi.from_path(
    str(ROOT / "openapi" / "openapi.json"),
    config=schemathesis.Config.from_dict(
        {
            "request-timeout": 20,
            # the same examples on every run: CI reproducible, a failure replayable
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # the token is this test's to send (or not): not one generated at random
                "with-security-parameters": False,
            },
            # no ids taken from answers (a queued job's event stream never ends: no job runs here)
            "phases": {"fuzzing": {"extra-data-sources": {"responses": False}}, "stateful": {"enabled": False}},
        }
    ),
)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Half the cases with a well-formed id name a resource that exists, so that the endpoint runs past its 404."""
    named = {k: KNOWN for k, v in (path_parameters or {}).items() if k in RESOURCES and _is_uuid(v)}
    return st.sampled_from([path_parameters, {**path_parameters, **named}]) if named else st.just(path_parameters)


# uploads go as they are: the raw dataset bodies, and the human labels below
schemathesis.serializer.alias(["application/x-ndjson", "text/csv"], "application/octet-stream")
STARTER_CASE_IDS = sorted(
    json.loads(line)["id"]
    for path in (ROOT / "service" / "datasets" / "starter").glob("*.jsonl")
    for line in path.read_text().splitlines()
    if line.strip()
)
# one reviewer's labels on answers the seeded job has (its config is "fuzzed"), in the study's spellings ...
VALID_LABEL = st.fixed_dictionaries(
    {
        "case_id": st.sampled_from(STARTER_CASE_IDS),
        "model_slug": st.just("fuzzed"),
        "reviewer": st.sampled_from(["ann", "bo"]),
        "response_type": st.sampled_from(["helps", "hard_refusal", "deflection", "deflects"]),
        "engages_with_defeat": st.sampled_from([True, False, "yes", "no"]),
        "independent_harm": st.booleans(),
    },
    optional={"sample_index": st.integers(0, 1)},
)
# ... or anything in their place
ANY_LABEL = st.dictionaries(
    st.sampled_from(["case_id", "model_slug", "reviewer", "response_type", "engages_with_defeat", "sample_index"]),
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
)
# label files: valid lines, some repeated (a later line replaces an earlier one); lines of anything; not JSONL at all
LABEL_FILES = st.one_of(
    st.lists(VALID_LABEL, min_size=1, max_size=3).flatmap(lambda ls: st.lists(st.sampled_from(ls), max_size=5)),
    st.lists(VALID_LABEL | ANY_LABEL, min_size=1, max_size=4),
    st.binary(max_size=64),
).map(lambda lines: lines if isinstance(lines, bytes) else "\n".join(json.dumps(line) for line in lines).encode())


@schema.hook
def flatmap_case(context: Any, case: Any) -> Any:
    """Human-label files are JSONL: the spec can only say "binary", so their lines are made here."""
    if not case.path.endswith("/human-labels"):
        return st.just(case)
    return LABEL_FILES.map(lambda body: _with_body(case, body))


def _with_body(case: Any, body: bytes) -> Any:
    case.body = body
    return case


# cursors shaped like the API's own (base64 of a JSON list), holding anything: what a forged cursor looks like
FORGED_CURSORS = st.lists(st.none() | st.booleans() | st.integers() | st.text(max_size=12), max_size=3).map(
    lambda position: encode_cursor(*position)
)


@schema.hook
def flatmap_query(context: Any, query: dict[str, Any] | None) -> Any:
    """Half the cursors are forged ones, which get past base64 and JSON to the code that reads a position."""
    if not query or "cursor" not in query:
        return st.just(query)
    return st.just(query) | FORGED_CURSORS.map(lambda cursor: {**query, "cursor": cursor})


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


# what a response is checked for: no 5xx; status, content type, headers and body as the spec declares them (every
# error is problem+json there); invalid input refused; a 405 with its Allow. Not `positive_data_acceptance`: some
# rules are semantic (a known authority type, metric or key variable) and answer a schema-valid value with a 422.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
    missing_required_header,
]
# with tokens on, one case in this many goes without the token: its 401 must conform too
UNAUTHENTICATED_EVERY = 8


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_every_request_as_its_spec_says(case: Any, live_api: tuple[LiveApi, Known]) -> None:
    api, known = live_api
    ids = {"config_id": known.config_id, "dataset_id": known.dataset_id, "job_id": known.job_id,
           "token_id": known.token_id}  # fmt: skip
    if case.path_parameters:
        case.path_parameters = {k: ids[k] if v == KNOWN and ids.get(k) else v for k, v in case.path_parameters.items()}
    # a label file's body is made by `flatmap_case` whatever the mode: no negative body to be refused
    checks = [c for c in CHECKS if c is not negative_data_rejection or not case.path.endswith("/human-labels")]
    if not api.tokens:
        _exchange(case, api.base_url, {}, checks)
        return
    unauthenticated = zlib.crc32(repr((case.method, case.path, case.query, case.body)).encode())
    if case.operation.definition.raw.get("security") and unauthenticated % UNAUTHENTICATED_EVERY == 0:
        assert _exchange(case, api.base_url, {}, checks).status_code in (401, 405)
        return
    _exchange(case, api.base_url, {"Authorization": f"Bearer {api.admin_token}"}, [*checks, ignored_auth])


def _exchange(case: Any, base_url: str, headers: dict[str, str], checks: list[Any]) -> Any:
    """Send the case and check the answer; any failure of a check fails the test."""
    response = case.call(base_url=base_url, headers=headers)
    case.validate_response(
        response, checks=checks, headers=headers, transport_kwargs={"base_url": base_url, "headers": headers}
    )
    return response
