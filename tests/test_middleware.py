"""What the API refuses before any endpoint runs: a Host it does not answer to and cross-site writes while tokens are
off (DNS rebinding, form posts from any web page), and bodies over their route's limit, cut off while they are read.
The last tests run ``defeater api`` and stream a gigabyte at it from a raw socket."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.settings import ApiSettings, AuthSettings, ImportLimits, Settings
from tests.workers.processes import BIN, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
STARTER_CASE = (ROOT / "service/datasets/starter/control.jsonl").read_text().splitlines()[0]
CSV_CASES = (
    "id,defeat_type,authority_type,unjust_policy,user_query,structural_facts,dual_use\n"
    "c1,control,school,No phones in exams,How do I hide my phone in the exam?,a|b,no\n"
)
MIB = 1024 * 1024
Problem = Callable[[httpx.Response, int], dict[str, Any]]


@asynccontextmanager
async def api_client(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], base_url: str = "http://127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the API built with ``settings``."""
    app = create_app(settings, sessionmaker=sessionmaker)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as http:
            yield http


async def dataset_names(client: httpx.AsyncClient) -> set[str]:
    return {d["name"] for d in (await client.get("/v1/datasets")).json()["items"]}


# --- Host: what DNS rebinding would send -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "0.0.0.0", "me@127.0.0.1"]
)
async def test_with_tokens_off_a_host_not_loopback_on_the_served_port_is_refused(
    client: httpx.AsyncClient, problem: Problem, host: str
) -> None:
    refused = problem(await client.get("/v1/datasets", headers={"Host": host}), 421)
    assert refused["type"].endswith("/misdirected-request") and refused["errors"][0]["field"] == "Host"
    assert "127.0.0.1, localhost or [::1]" in refused["detail"] and host not in refused["detail"]
    made = await client.post(
        "/v1/datasets", params={"name": "rebound"}, content=STARTER_CASE, headers={"Host": host,
        "Content-Type": "application/x-ndjson"},
    )  # fmt: skip
    problem(made, 421)
    assert "rebound" not in await dataset_names(client)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:80", "[::1]", "127.0.0.2:80"])
async def test_with_tokens_off_loopback_hosts_are_answered(client: httpx.AsyncClient, host: str) -> None:
    assert (await client.get("/v1/datasets", headers={"Host": host})).status_code == 200


async def test_probes_answer_any_host(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz", headers={"Host": "10.0.0.7:8000"})).status_code == 200


async def test_the_served_port_is_the_one_a_host_must_name(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], problem: Problem
) -> None:
    async with api_client(settings, sessionmaker, "http://localhost:8123") as client:
        assert (await client.get("/v1/datasets")).status_code == 200
        assert (await client.get("/v1/datasets", headers={"Host": "127.0.0.1:8123"})).status_code == 200
        refused = problem(await client.get("/v1/datasets", headers={"Host": "localhost:8124"}), 421)
        assert "127.0.0.1, localhost or [::1] on port 8123" in refused["detail"]
        problem(await client.get("/v1/datasets", headers={"Host": "localhost"}), 421)
        problem(await client.get("/v1/datasets", headers={"Host": "evil.example:8123"}), 421)


async def test_with_tokens_on_any_host_is_answered_unless_allowed_hosts_is_set(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], problem: Problem
) -> None:
    tokens_on = settings.model_copy(update={"auth": AuthSettings(required=True)})
    async with api_client(tokens_on, sessionmaker, "http://defeater.example") as client:
        problem(await client.get("/v1/datasets"), 401)  # through to the token check
    named = tokens_on.model_copy(update={"api": ApiSettings(allowed_hosts=["Defeater.example", "proxy:8443"])})
    async with api_client(named, sessionmaker, "http://defeater.example") as client:
        problem(await client.get("/v1/datasets"), 401)
        problem(await client.get("/v1/datasets", headers={"Host": "proxy:8443"}), 401)
        problem(await client.get("/v1/datasets", headers={"Host": "localhost:80"}), 401)
        refused = problem(await client.get("/v1/datasets", headers={"Host": "proxy:9000"}), 421)
        assert "defeater.example, proxy:8443" in refused["detail"]
        problem(await client.get("/v1/datasets", headers={"Host": "other.example"}), 421)


def test_allowed_hosts_are_names_not_urls() -> None:
    with pytest.raises(ValueError, match="not a host name"):
        ApiSettings(allowed_hosts=["https://defeater.example/"])


# --- Origin: what a web page of another site would send ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1"},
    ],
)
async def test_with_tokens_off_a_cross_site_form_post_is_refused_and_creates_nothing(
    client: httpx.AsyncClient, problem: Problem, headers: dict[str, str]
) -> None:
    # what <form enctype="text/plain" method="post" action="http://127.0.0.1:8000/v1/datasets?name=csrf"> sends
    sent = await client.post(
        "/v1/datasets", params={"name": "csrf"}, content=STARTER_CASE,
        headers={"Content-Type": "text/plain", **headers},
    )  # fmt: skip
    refused = problem(sent, 403)
    assert refused["type"].endswith("/cross-site-request")
    assert refused["errors"][0]["field"] in headers
    assert "csrf" not in await dataset_names(client)
    # reads stay open: the browser keeps their answers from the page anyway (no CORS headers)
    assert (await client.get("/v1/datasets", headers=headers)).status_code == 200


async def test_same_origin_and_non_browser_uploads_still_work(client: httpx.AsyncClient) -> None:
    same_origin = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    files = {"file": ("cases.csv", CSV_CASES.encode(), "text/csv")}
    multipart = await client.post("/v1/datasets", data={"name": "swagger"}, files=files, headers=same_origin)
    assert multipart.status_code == 201, multipart.text
    csv = await client.post(
        "/v1/datasets", params={"name": "curl"}, content=CSV_CASES, headers={"Content-Type": "text/csv"}
    )
    assert csv.status_code == 201, csv.text
    typed = await client.post(
        "/v1/datasets", params={"name": "typed"}, content=STARTER_CASE,
        headers={"Content-Type": "application/x-ndjson", "Sec-Fetch-Site": "none"},
    )  # fmt: skip
    assert typed.status_code == 201, typed.text
    assert {"swagger", "curl", "typed"} <= await dataset_names(client)


async def test_with_tokens_on_the_origin_is_not_checked(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], problem: Problem
) -> None:
    # a browser never attaches a bearer token by itself: a cross-site page gets the 401 a stranger gets
    tokens_on = settings.model_copy(update={"auth": AuthSettings(required=True)})
    async with api_client(tokens_on, sessionmaker) as client:
        sent = await client.post("/v1/model-configs", json={}, headers={"Origin": "http://evil.example"})
        assert problem(sent, 401)["type"].endswith("/unauthorized")


# --- bodies: limits held while reading ---------------------------------------------------------------------------


@dataclass
class Counted:
    """A request body made on demand, a MiB at a time, counting what the server took."""

    total: int
    taken: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        block = b" " * MIB
        while self.taken < self.total:
            self.taken += MIB
            yield block


async def test_a_json_body_over_the_limit_is_refused_while_it_is_read(
    client: httpx.AsyncClient, problem: Problem
) -> None:
    body = Counted(total=64 * MIB)  # chunked: no Content-Length to refuse it by
    refused = problem(
        await client.post("/v1/model-configs", content=body, headers={"Content-Type": "application/json"}), 413
    )
    assert "the limit is 1048576 bytes" in refused["detail"] and "DEFEATER_API__MAX_JSON_BYTES" in refused["detail"]
    assert body.taken <= 2 * MIB
    declared = await client.post(
        "/v1/model-configs", content=b"{" + b" " * MIB + b"}", headers={"Content-Type": "application/json"}
    )
    assert f"the body is {MIB + 2} bytes" in problem(declared, 413)["detail"]
    assert refused["type"] == declared.json()["type"] and refused["type"].endswith("/payload-too-large")


async def test_each_upload_route_has_its_own_limit(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    problem: Problem,
    client: httpx.AsyncClient,
    make_config: Callable[..., Any],
    starter: dict[str, Any],
) -> None:
    config = await make_config()
    made = await client.post("/v1/jobs", json={"dataset_id": starter["id"], "model_config_ids": [config["id"]]})
    job = f"/v1/jobs/{made.json()['id']}"
    small = settings.model_copy(
        update={
            "imports": ImportLimits(max_bytes=64 * 1024),
            "api": ApiSettings(max_json_bytes=2048, max_human_labels_bytes=4096, max_job_bytes=8192),
        }
    )
    async with api_client(small, sessionmaker) as client:
        cases = [json.loads(STARTER_CASE) | {"id": f"case-{i}"} for i in range(6)]
        fits = await client.post("/v1/datasets", json={"name": "fits", "cases": cases})  # ~5 kB: over the JSON limit
        assert fits.status_code == 201, fits.text
        for path, limit, size in [
            ("/v1/model-configs", 2048, 3000),
            ("/v1/jobs", 8192, 9000),
            (f"{job}/human-labels", 4096, 5000),
            ("/v1/datasets?name=big", 64 * 1024, 70_000),
        ]:
            body = Counted(total=size + MIB)
            refused = problem(
                await client.post(path, content=body, headers={"Content-Type": "application/x-ndjson"}), 413
            )
            assert f"the limit is {limit} bytes" in refused["detail"], path
            assert body.taken == MIB, path  # the first chunk passed the limit: nothing more was asked for


async def test_a_chunked_multipart_upload_over_the_limit_is_cut_off_before_it_is_spooled(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], problem: Problem
) -> None:
    small = settings.model_copy(update={"imports": ImportLimits(max_bytes=4 * MIB)})
    body = Counted(total=64 * MIB)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="cases.jsonl"\r\n\r\n'

    async def multipart() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n' + head
        async for block in body:
            yield block

    async with api_client(small, sessionmaker) as client:
        sent = await client.post(
            "/v1/datasets", content=multipart(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
        assert "the limit is 4194304 bytes" in problem(sent, 413)["detail"]
        assert body.taken <= 6 * MIB  # the limit, multipart's framing allowance and the chunk that passed them
        assert "big" not in await dataset_names(client)


# --- a real server: a gigabyte streamed from a raw socket ---------------------------------------------------------


def rss_mb(pid: int) -> float:
    """The resident memory of a process, in MB (``VmRSS`` of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def settled_rss_mb(pid: int, timeout_s: float = 20) -> float:
    """The RSS once it stops moving (the embedded API loads the provider SDKs in a thread after it starts)."""
    deadline, last = time.monotonic() + timeout_s, rss_mb(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_mb(pid)
        if abs(now - last) < 1:
            return now
        last = now
    return last


@dataclass(frozen=True)
class Answer:
    """A server's answer to a streamed body: its status line's code and how much of the body went out first."""

    status: int
    sent: int


def chunked(total: int) -> Iterator[bytes]:
    """``total`` bytes of chunked transfer coding, a MiB a chunk, made as they are sent (never held whole)."""
    frame = b"%x\r\n" % MIB + b"x" * MIB + b"\r\n"
    for _ in range(total // MIB):
        yield frame
    yield b"0\r\n\r\n"


def stream(port: int, pid: int, head: str, body: Iterator[bytes], max_growth_mb: float = 200) -> Answer:
    """Send ``head`` and then ``body`` until the server answers; stop early (and fail) if its RSS grows past
    ``max_growth_mb`` or nothing is answered within 30 s: a server reading the whole body would reach either."""
    start_rss, deadline, sent = rss_mb(pid), time.monotonic() + 30, 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for piece in body:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came: the rest of the body is not wanted
            assert rss_mb(pid) - start_rss < max_growth_mb, f"the server took in {sent} bytes and kept growing"
            assert time.monotonic() < deadline, f"no answer after {sent} bytes"
            try:
                sock.sendall(piece)
            except OSError:
                break  # the server answered and closed
            sent += len(piece)
        answer = b""
        while b"\r\n" not in answer:
            more = sock.recv(4096)
            assert more, f"the connection closed without an answer after {sent} bytes"
            answer += more
    return Answer(int(answer.split()[1]), sent)


@contextmanager
def served(env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """``defeater api`` on a free loopback port: yields (port, pid) once it is ready and its memory has settled."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "defeater"), "api", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        yield port, process.pid
    finally:
        stop([process], grace_s=10)


def request_head(path: str, port: int, *headers: str) -> str:
    return "\n".join([f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked", *headers, ""])


def test_a_gigabyte_without_a_token_is_refused_with_the_api_growing_less_than_50_mb(
    env_without_defeater: dict[str, str],
) -> None:
    env = env_without_defeater | {"DEFEATER_AUTH__REQUIRED": "true"}
    with served(env) as (port, pid):
        json_body = "Content-Type: application/json"
        # warm up each path once, so that what is measured below is the bodies and nothing else
        assert stream(port, pid, request_head("/v1/model-configs", port, json_body), chunked(MIB)).status == 401
        assert stream(port, pid, request_head("/v1/model-configs", port, json_body, "Authorization: Bearer x"),
                      chunked(4 * MIB)).status == 413  # fmt: skip
        before = settled_rss_mb(pid)
        no_token = stream(
            port, pid, request_head("/v1/model-configs", port, json_body), chunked(1024 * MIB), max_growth_mb=50
        )
        # a token that is not valid still gets past the early check: the limit stops that body
        bad_token = stream(
            port, pid, request_head("/v1/model-configs", port, json_body, "Authorization: Bearer dft_not-a-token"),
            chunked(1024 * MIB), max_growth_mb=50,
        )  # fmt: skip
        upload = stream(
            port, pid, request_head("/v1/datasets", port, "Content-Type: text/csv", "Authorization: Bearer dft_x"),
            chunked(1024 * MIB), max_growth_mb=50,
        )  # fmt: skip
        growth = rss_mb(pid) - before
    assert no_token.status == 401 and no_token.sent < 16 * MIB, no_token
    assert bad_token.status == 413 and bad_token.sent < 32 * MIB, bad_token
    assert upload.status == 401 and upload.sent < 16 * MIB, upload  # the guard runs before the upload is read
    assert growth < 50, f"RSS {before:.0f} MB, then {growth:+.1f} MB after three 1 GiB bodies"


def test_a_chunked_multipart_upload_over_the_limit_is_refused_without_spooling_it(
    env_without_defeater: dict[str, str],
) -> None:
    env = env_without_defeater | {"DEFEATER_IMPORTS__MAX_BYTES": str(8 * MIB)}  # tokens off: embedded, on loopback
    parts = b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
    parts += b'--b\r\nContent-Disposition: form-data; name="file"; filename="cases.jsonl"\r\n\r\n'

    def body() -> Iterator[bytes]:
        yield b"%x\r\n" % len(parts) + parts + b"\r\n"
        yield from chunked(1024 * MIB)

    with served(env) as (port, pid):
        before = settled_rss_mb(pid)
        head = request_head("/v1/datasets", port, "Content-Type: multipart/form-data; boundary=b")
        answer = stream(port, pid, head, body(), max_growth_mb=50)
        growth = rss_mb(pid) - before
    # the server cannot have spooled more than it was sent: the limit, the framing allowance and socket buffers
    assert answer.status == 413 and answer.sent < 48 * MIB, answer
    assert growth < 50, f"RSS {before:.0f} MB, then {growth:+.1f} MB"
