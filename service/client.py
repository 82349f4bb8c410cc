"""The client side of the CLI: ``defeater submit``, ``status``, ``wait`` and ``gate`` against a running service.

They read ``DEFEATER_URL`` and ``DEFEATER_API_TOKEN``. Exit codes are for CI (``service/exit_codes.py``, the table
in ``docs/ci.md``): ``gate`` exits 0 when the gate passes, 1 when it fails, 2 when it is inconclusive and 5 when
anything went wrong (bad file, unreachable service, refused request), so that an error is never read as a verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx

from service.cli_progress import PHASES, phases_text
from service.client_file import Submission
from service.errors import DefeaterError, FieldError
from service.exit_codes import ExitCode
from service.gates.text import P_VALUE_LEGEND, against, check_name, interval, number, why
from service.settings import Settings

# how often ``wait`` asks for news, and how many times it reconnects to a stream that was cut
EVENTS_INTERVAL_S = 1.0
RECONNECTS = 20
EXIT = {"pass": ExitCode.OK, "fail": ExitCode.FAILED, "inconclusive": ExitCode.INCONCLUSIVE}


class ServiceError(DefeaterError):
    """The service could not be reached, or refused a request; the message says which and why."""


URL_UNSET = "DEFEATER_URL is not set: the address of the Defeater service, e.g. http://127.0.0.1:8000"


def service_root(url: str) -> str:
    """The service's address as the client joins paths to it: ``https://h/`` and ``https://h/v1/`` are both
    ``https://h`` (every path the client asks for starts with ``/v1``)."""
    root = url.strip().rstrip("/").removesuffix("/v1").rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise ServiceError(f"DEFEATER_URL {url!r} is not an http:// or https:// address, e.g. http://127.0.0.1:8000")
    return root


class ServiceClient:
    """A thin client of the REST API that turns every failure into a ``ServiceError`` with a clear message.

    It needs ``DEFEATER_URL``: without it, it refuses to start rather than guess at an address."""

    def __init__(self, settings: Settings | None = None, timeout_s: float = 30.0) -> None:
        settings = settings or Settings()
        if not settings.url:
            raise ServiceError(URL_UNSET)
        self.url = service_root(settings.url)
        headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the service at {self.url} ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            raise _refused(method, path, response)
        return response.json() if response.content else None

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events, reconnecting when a stream is cut (an API replica going away) or reaches its
        maximum lifetime; a ``ServiceError`` when the service ends it because the token was revoked."""
        self.call("GET", f"/v1/jobs/{job_id}")  # an unreachable service or an unknown job is an error at once
        lost = 0
        while lost < RECONNECTS:
            try:
                outcome = yield from self._stream(job_id)
            except httpx.HTTPError:
                outcome = "cut"
            if outcome == "end":
                return
            if outcome == "cut":  # a lifetime's end reconnects at once and is not counted
                lost += 1
                time.sleep(1.0)
        raise ServiceError(f"lost the event stream of job {job_id} at {self.url} {RECONNECTS} times")

    def _stream(self, job_id: str) -> Generator[tuple[str, dict[str, Any]], None, str]:
        """One stream's events; then ``end`` (the job ended), ``reconnect`` (the stream's lifetime did) or ``cut``."""
        path = f"/v1/jobs/{job_id}/events"
        with self.http.stream("GET", path, params={"interval": EVENTS_INTERVAL_S}, timeout=None) as stream:
            if stream.status_code >= 400:
                stream.read()
                raise _refused("GET", path, stream)
            for event in parse_events(stream.iter_lines()):
                if event[0] == "close":
                    return _closed(job_id, event[1])
                yield event
                if event[0] == "end":
                    return "end"
        return "cut"


def _closed(job_id: str, data: dict[str, Any]) -> str:
    """What a ``close`` event means for the client: reconnect, or stop with the service's reason."""
    if data.get("reason") == "max_lifetime":
        return "reconnect"
    raise ServiceError(f"the service ended the event stream of job {job_id}: {data.get('detail') or data}")


def _refused(method: str, path: str, response: httpx.Response) -> ServiceError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") or response.reason_phrase or "refused"
    errors = [FieldError(e.get("field", "?"), e.get("message", "")) for e in body.get("errors") or []]
    return ServiceError(f"{method} {path}: {response.status_code} {detail}", errors)


def parse_events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream body; comments (keep-alive pings) are skipped."""
    name, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data += line.partition(":")[2].strip()


def submit(client: ServiceClient, submission: Submission, idempotency_key: str | None = None) -> dict[str, Any]:
    """Register (or find) the full configs, start the job; returns the job as the API shows it.

    The dataset and the configs given by name or id go to the service as they are written: it resolves them (a
    dataset name is its most recently imported version, ``name@version`` picks one) and names what it cannot find.
    """
    body = dict(submission.job)
    body["dataset_id"] = submission.dataset
    body["model_config_ids"] = [_config_ref(client, m) for m in submission.models]
    if submission.judges is not None:
        body["judge_config_ids"] = [_config_ref(client, j) for j in submission.judges]
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job: dict[str, Any] = client.call("POST", "/v1/jobs", json=body, headers=headers)
    return job


def _config_ref(client: ServiceClient, ref: Any) -> str:
    """A config's name or id as written, or the id of a full config once registered (or found again)."""
    if isinstance(ref, str):
        return ref
    registered = client.call("POST", "/v1/model-configs", json=ref.model_dump(mode="json", exclude_none=True))
    return str(registered["id"])


def progress_line(status: dict[str, Any]) -> str:
    """One plain line of a job's status, for logs (CI) where a progress bar would be noise."""
    return f"{status['state']}: {phases_text(status['progress'])}, {_rate_eta_spend(status)}"


def figures_line(status: dict[str, Any]) -> str:
    """The line under the bars of ``wait``: state, units held by workers, throughput, ETA, spend."""
    progress = status["progress"]
    leased = sum(progress[phase].get("leased", 0) for phase in PHASES)
    return f"{status['state']}, {leased} leased by workers, {_rate_eta_spend(status)}"


def _rate_eta_spend(status: dict[str, Any]) -> str:
    # the service's throughput counts units that became final (answers from the cache too), hence units/s
    eta = f"{status['eta_seconds']:.0f} s" if status.get("eta_seconds") is not None else "-"
    return f"{status['calls_per_second']:.1f} units/s, ETA {eta}, ${status['cost_usd']:.4f}"


def junit_xml(job_id: str, gate: dict[str, Any]) -> str:
    """The gate as JUnit XML: a test case per (config, check), named by metric, cases and threshold or baseline (a
    name repeated within a config gets the check's position); a failed check fails, an inconclusive one errs."""
    checks = [(c, check) for c in gate["configs"] for check in c["checks"]]
    suite = ElementTree.Element(
        "testsuite",
        name=f"defeater gate {job_id}",
        tests=str(len(checks)),
        failures=str(sum(check["verdict"] == "fail" for _, check in checks)),
        errors=str(sum(check["verdict"] == "inconclusive" for _, check in checks)),
    )
    for config in gate["configs"]:
        names = _unique([check_name(check) for check in config["checks"]], config["checks"])
        for check, name in zip(config["checks"], names, strict=True):
            case = ElementTree.SubElement(
                suite, "testcase", classname=str(config.get("name") or config["model_config_id"]), name=name
            )
            if check["verdict"] == "fail":
                ElementTree.SubElement(case, "failure", message=_check_figures(check))
            elif check["verdict"] == "inconclusive":
                ElementTree.SubElement(case, "error", message=f"inconclusive: {_check_figures(check)}")
    root = ElementTree.Element("testsuites")
    root.append(suite)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)


def _unique(names: list[str], checks: list[dict[str, Any]]) -> list[str]:
    """The names, each one that occurs more than once told apart by its check's position in the gate."""
    repeated = {name for name in names if names.count(name) > 1}
    return [
        f"{name} [check {check.get('index', i)}]" if name in repeated else name
        for i, (name, check) in enumerate(zip(names, checks, strict=True))
    ]


def markdown(job_id: str, gate: dict[str, Any]) -> str:
    """The gate as a Markdown summary, for a pull request comment: a row per check with why it did not pass, and
    what the p-values are."""
    lines = [f"### Defeater gate: **{gate['verdict']}** (job `{job_id}`)", ""]
    if not gate.get("final", True):
        lines += [f"The job is still {gate['state']}: the verdict may change.", ""]
    lines += [
        "| config | check | figure | 95% CI | threshold / baseline | p | verdict | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config in gate["configs"]:
        for check in config["checks"]:
            lines.append(
                f"| {config.get('name') or config['model_config_id']} | {check_name(check)} | "
                f"{number(check.get('figure'))} | {interval(check.get('ci95'))} | {against(check)} | "
                f"{number(check.get('p_value'))} | {check['verdict']} | {why(check)} |"
            )
    return "\n".join([*lines, "", P_VALUE_LEGEND]) + "\n"


def _check_figures(check: dict[str, Any]) -> str:
    parts = [f"figure {number(check.get('figure'))} {interval(check.get('ci95'))}", against(check)]
    if check.get("p_value") is not None:
        parts.append(f"p {number(check['p_value'])} (one-sided)")
    if check.get("reason"):
        parts.append(str(check["reason"]))
    return ", ".join(parts)


def write_reports(job_id: str, gate: dict[str, Any], junit: Path | None, summary: Path | None) -> None:
    if junit is not None:
        junit.write_text(junit_xml(job_id, gate), encoding="utf-8")
    if summary is not None:
        summary.write_text(markdown(job_id, gate), encoding="utf-8")
