"""The deployment, checked offline: k8s/ against a pinned Kubernetes version's schemas, the Dockerfile's shape,
and the `defeater` commands the manifests and the image rely on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import asyncpg
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from sqlalchemy import make_url, select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from service.datasets.service import ensure_starter
from service.db.models import JobState, Judgement, Provider, Request, UnitState
from service.db.session import create_engine, create_sessionmaker
from service.jobs.schemas import JobCreate, JobFilters
from service.jobs.service import create_job
from service.model_configs.schemas import DEFAULT_KEY_ENV, ModelConfigCreate
from service.model_configs.service import register
from service.settings import Settings
from tests.conftest import ROOT, migrated_database

K8S = ROOT / "k8s"
KUSTOMIZATION = "kustomization.yaml"
EXAMPLE_SECRET = "secret.example.yaml"
# The schemas kubernetes-validate ships for this version (strict: unknown fields are errors).
KUBERNETES_VERSION = "1.30"
# Custom resources, checked by hand below (no schema ships for them).
KEDA_API = "keda.sh/v1alpha1"
# what KEDA's postgresql trigger would connect with if the metadata named it; ours comes from a Secret instead
POSTGRES_CONNECTION_FIELDS = {
    "connection", "connectionFromEnv", "host", "port", "userName", "password", "passwordFromEnv", "dbName", "sslmode"
}  # fmt: skip
IMAGE = "defeater"
UID = 10001
PLACEHOLDER = "CHANGE-ME"
SECRET_ENV = re.compile(r"(_KEY|_TOKEN|PASSWORD)$")
SECRET_URLS = {"DEFEATER_DATABASE_URL", "DEFEATER_REDIS_URL"}
WORKLOAD_KINDS = {"Deployment", "Job"}
COMPONENT = "app.kubernetes.io/component"
# strings shaped like real provider keys, anywhere in the deployment files
KEY_SHAPES = re.compile(r"sk-[A-Za-z0-9_-]{20,}|sk-ant-[A-Za-z0-9_-]{10,}|AIza[0-9A-Za-z_-]{30,}")


@dataclass(frozen=True)
class Manifest:
    """One object of one file in k8s/."""

    file: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    @property
    def id(self) -> str:
        return f"{self.file}:{self.kind}/{self.name}"


def load(path: Path) -> list[Manifest]:
    with path.open() as f:
        return [Manifest(path.name, doc) for doc in yaml.safe_load_all(f) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.iterdir() if p.suffix in (".yaml", ".yml") and p.name != KUSTOMIZATION)


def all_manifests() -> list[Manifest]:
    """Every object in k8s/, the example Secret's included."""
    return [m for path in manifest_files() for m in load(path)]


ALL = all_manifests()
APPLIED = [m for m in ALL if m.file != EXAMPLE_SECRET]
BUILTIN = [m for m in ALL if m.doc.get("apiVersion") != KEDA_API]
WORKLOADS = [m for m in APPLIED if m.kind in WORKLOAD_KINDS]


def pod_spec(m: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = m.doc["spec"]["template"]["spec"]
    return spec


def pod_labels(m: Manifest) -> dict[str, str]:
    labels: dict[str, str] = m.doc["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(m: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(m)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workload(command: str) -> Manifest:
    """The one workload whose container runs ``defeater <command> ...``."""
    found = [m for m in WORKLOADS if pod_spec(m)["containers"][0].get("args", [None])[0] == command]
    assert len(found) == 1, f"expected one workload running `defeater {command}`, found {[m.id for m in found]}"
    return found[0]


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in APPLIED if m.kind == kind]


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity (``250m``, ``1``, ``768Mi``) as a number."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match and match[2] in units, f"not a quantity: {value!r}"
    return float(match[1]) * units[match[2]]


# ---- files and kustomize -------------------------------------------------------------------------------------


def test_every_manifest_parses_and_is_namespace_agnostic() -> None:
    assert ALL, "no manifests in k8s/"
    for m in ALL:
        assert {"apiVersion", "kind", "metadata"} <= m.doc.keys(), m.file
        assert m.name, m.file
        assert "namespace" not in m.doc["metadata"], f"{m.id} pins a namespace"
        assert m.kind != "Namespace", f"{m.id}: the namespace is the deployer's choice"
    ids = [(m.kind, m.name) for m in APPLIED]
    assert len(ids) == len(set(ids)), "two objects share a kind and name"


def test_kustomization_lists_every_manifest_except_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text())
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    expected = {p.name for p in manifest_files()} - {EXAMPLE_SECRET}
    assert set(resources) == expected
    assert "namespace" not in kustomization
    assert [i["name"] for i in kustomization["images"]] == [IMAGE], "the image is set in one place"


def test_kustomize_build_renders_every_object_with_the_real_image() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: the rendered output is unchecked")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted((m.kind, m.name) for m in APPLIED)
    image = yaml.safe_load((K8S / KUSTOMIZATION).read_text())["images"][0]
    for doc in built:
        assert "namespace" not in doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "defeater"
        for c in doc["spec"]["template"]["spec"]["containers"] if doc["kind"] in WORKLOAD_KINDS else []:
            assert c["image"] == f"{image['newName']}:{image['newTag']}"


# ---- schemas -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", BUILTIN, ids=lambda m: m.id)
def test_builtin_objects_validate_against_the_kubernetes_schemas(manifest: Manifest) -> None:
    problem = version = None
    try:
        version = kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        problem = f"{manifest.id} is not valid Kubernetes {KUBERNETES_VERSION}: {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        problem = f"{manifest.id}: {exc.message} (a custom resource must be checked by hand in this file)"
    if problem:
        pytest.fail(problem, pytrace=False)
    assert version == KUBERNETES_VERSION


def scaled_object() -> dict[str, Any]:
    [scaled] = of_kind("ScaledObject")
    spec: dict[str, Any] = scaled.doc["spec"]
    return spec


def test_keda_scales_the_worker_on_open_units_in_postgres() -> None:
    keda = [m for m in APPLIED if m.doc["apiVersion"] == KEDA_API]
    assert sorted(m.kind for m in keda) == ["ScaledObject", "TriggerAuthentication"]
    scaled = scaled_object()
    assert scaled["scaleTargetRef"]["name"] == workload("worker").name
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    # at least one worker: the periodic reconcile (expired leases, jobs to finish) runs in a worker
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "postgresql", "Postgres is the ledger; arq's queue only carries wake-ups"
    metadata = trigger["metadata"]
    assert metadata["query"].lstrip().upper().startswith("SELECT")
    assert float(metadata["targetQueryValue"]) > 0
    assert float(metadata.get("activationTargetQueryValue", 0)) >= 0
    # connection details go through the TriggerAuthentication, from the Secret, never in the trigger
    assert not set(metadata) & POSTGRES_CONNECTION_FIELDS, "connection details belong to the TriggerAuthentication"
    [auth] = of_kind("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth.name
    assert [(r["parameter"], r["name"], r["key"]) for r in auth.doc["spec"]["secretTargetRef"]] == [
        ("connection", "defeater-database", "DEFEATER_DATABASE_URL")
    ]


def test_keda_reads_the_database_url_the_services_read() -> None:
    [example] = [m for m in ALL if m.file == EXAMPLE_SECRET and m.name == "defeater-database"]
    url = urlsplit(example.doc["stringData"]["DEFEATER_DATABASE_URL"])
    # KEDA's scaler (pgx) takes a libpq URL as it is: no SQLAlchemy driver suffix such as +asyncpg
    assert url.scheme in ("postgres", "postgresql") and url.hostname and url.path.strip("/")
    assert not any(key.startswith("KEDA_") for m in ALL if m.kind == "Secret" for key in m.doc["stringData"])


class Units(NamedTuple):
    """How many of a job's requests and judgements are in each state."""

    requests: dict[UnitState, int]
    judgements: dict[UnitState, int]

    @property
    def open(self) -> int:
        return sum(n for units in self for state, n in units.items() if state in OPEN_STATES)


OPEN_STATES = (UnitState.pending, UnitState.leased)
ALL_STATES = {UnitState.pending: 3, UnitState.leased: 2, UnitState.succeeded: 4, UnitState.failed: 1}


@dataclass(frozen=True)
class LedgerJob:
    state: JobState
    units: Units
    paused_reason: str | None = None
    counted: bool = False


# Every kind of job the ledger holds; the query must count the open units of the first two only.
LEDGER_JOBS = {
    "running": LedgerJob(JobState.running, Units(ALL_STATES, {**ALL_STATES, UnitState.leased: 1}), counted=True),
    "queued": LedgerJob(JobState.queued, Units({UnitState.pending: 5}, {}), counted=True),
    "cancelled": LedgerJob(
        JobState.cancelled, Units({UnitState.pending: 4, UnitState.leased: 1}, {UnitState.pending: 2})
    ),
    "paused": LedgerJob(
        JobState.running, Units({UnitState.pending: 3}, {UnitState.pending: 1}), paused_reason="budget"
    ),
    "completed": LedgerJob(JobState.completed, Units({UnitState.succeeded: 2}, {UnitState.succeeded: 2})),
    "failed": LedgerJob(JobState.failed, Units({UnitState.failed: 1, UnitState.pending: 1}, {})),
}


async def register_config(session: AsyncSession, name: str) -> uuid.UUID:
    body = ModelConfigCreate(name=name, provider=Provider.openai, model="gpt-test")
    return (await register(session, body, Settings().providers)).config.id


async def write_job(
    session: AsyncSession, dataset_id: uuid.UUID, configs: tuple[uuid.UUID, uuid.UUID], job: LedgerJob
) -> None:
    """A job made by the service (its requests all pending), then moved to ``job``'s states."""
    target, judge = configs
    request_states = [state for state, count in job.units.requests.items() for _ in range(count)]
    judgement_states = [state for state, count in job.units.judgements.items() for _ in range(count)]
    assert len(judgement_states) <= len(request_states), "one judgement per request at most, here"
    body = JobCreate(
        dataset_id=dataset_id,
        model_config_ids=[target],
        judge_config_ids=[judge],
        filters=JobFilters(limit=len(request_states)),
    )
    created = (await create_job(session, body, Settings())).job
    requests = (await session.scalars(select(Request).where(Request.job_id == created.id))).all()
    assert len(requests) == len(request_states), "the starter dataset has fewer cases than the test needs"
    for request, state in zip(requests, request_states, strict=True):
        request.state = state
    for request, state in zip(requests, judgement_states, strict=False):
        session.add(
            Judgement(id=uuid.uuid4(), job_id=created.id, request_id=request.id, judge_config_id=judge, state=state)
        )
    created.state, created.paused_reason = job.state, job.paused_reason
    await session.flush()


@pytest.fixture(scope="module")
async def ledger_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A Postgres database built by the project's migrations, holding every kind of job in LEDGER_JOBS."""
    async with migrated_database("postgres", tmp_path_factory.mktemp("keda")) as url:
        engine = create_engine(Settings(database_url=url), pooled=False)
        try:
            async with create_sessionmaker(engine)() as session:
                dataset = await ensure_starter(session)
                configs = (await register_config(session, "keda-target"), await register_config(session, "keda-judge"))
                for job in LEDGER_JOBS.values():
                    await write_job(session, dataset.id, configs, job)
                await session.commit()
        finally:
            await engine.dispose()
        yield url


@pytest.mark.postgres
async def test_the_scaling_query_counts_the_open_units_of_the_jobs_being_worked_on(ledger_url: str) -> None:
    query = scaled_object()["triggers"][0]["metadata"]["query"]
    # as KEDA runs it: the manifest's text, as is, over a plain postgresql:// connection
    conn = await asyncpg.connect(make_url(ledger_url).set(drivername="postgresql").render_as_string(False))
    try:
        rows = await conn.fetch(query)
    finally:
        await conn.close()
    assert [len(row) for row in rows] == [1], "KEDA reads one value: one row, one column"
    [[open_units]] = rows
    assert isinstance(open_units, int)
    # pending and leased requests and judgements of the running job (5 + 4) and of the queued one (5)
    assert open_units == sum(job.units.open for job in LEDGER_JOBS.values() if job.counted) == 14
    # cancelled, paused and finished jobs hold open units too, and they do not count
    assert sum(job.units.open for job in LEDGER_JOBS.values()) > open_units


# ---- workloads -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", WORKLOADS, ids=lambda m: m.id)
def test_workloads_share_the_image_and_run_locked_down(manifest: Manifest) -> None:
    spec = pod_spec(manifest)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == UID, "the image's USER"
    assert spec.get("automountServiceAccountToken") is False, "no pod talks to the Kubernetes API"
    for c in containers(manifest):
        where = f"{manifest.id} container {c['name']}"
        assert c["image"] == IMAGE, f"{where}: one image for every process (kustomization.yaml sets the real one)"
        sc = c["securityContext"]
        assert sc.get("runAsUser", UID) != 0 and not sc.get("privileged", False), where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert "ALL" in sc["capabilities"]["drop"], where
        resources = c["resources"]
        for name in ("cpu", "memory"):
            request, limit = resources["requests"][name], resources["limits"][name]
            assert quantity(request) <= quantity(limit), f"{where}: {name} request above its limit"


def test_the_manifests_run_api_worker_and_migrations() -> None:
    api = pod_spec(workload("api"))["containers"][0]
    assert api["args"][:3] == ["api", "--host", "0.0.0.0"], "in a pod the api must listen on every interface"
    migrate = workload("db")
    assert migrate.kind == "Job" and pod_spec(migrate)["containers"][0]["args"] == ["db", "upgrade"]
    assert migrate.doc["spec"]["backoffLimit"] >= 1
    assert migrate.doc["spec"]["ttlSecondsAfterFinished"] > 0
    assert pod_spec(migrate)["restartPolicy"] in ("Never", "OnFailure")
    assert workload("worker").kind == "Deployment"
    assert pod_spec(workload("worker"))["containers"][0]["args"] == ["worker"]
    # docs/deploy.md applies these two first, by label, and waits for the schema before the rest
    first = {m.id for m in APPLIED if m.doc["metadata"]["labels"].get(COMPONENT) in ("config", "migrate")}
    assert first == {migrate.id, *(m.id for m in of_kind("ConfigMap"))}


def test_api_probes_point_at_the_health_endpoints_on_the_container_port() -> None:
    api = workload("api")
    [container] = pod_spec(api)["containers"]
    [port] = container["ports"]
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    assert {"livenessProbe", "readinessProbe"} <= container.keys()
    for probe, path in expected.items():
        if probe in container:
            assert container[probe]["httpGet"]["path"] == path, probe
            assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"]), probe
    args = container["args"]
    assert int(args[args.index("--port") + 1]) == port["containerPort"]
    [service] = of_kind("Service")
    assert service.doc["spec"]["selector"].items() <= pod_labels(api).items()
    assert service.doc["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])


def test_no_other_container_probes_anything_but_the_health_endpoints() -> None:
    for m in WORKLOADS:
        for c in containers(m):
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["path"] in ("/healthz", "/readyz"), f"{m.id} {probe}"
                    assert c[probe]["httpGet"]["port"] in ports, f"{m.id} {probe} probes an undeclared port"


def test_autoscaling_and_disruption_budgets_cover_api_and_worker() -> None:
    api, worker = workload("api"), workload("worker")
    for m in (api, worker):
        assert "replicas" not in m.doc["spec"], f"{m.id}: the autoscaler owns the replica count"
    [hpa] = of_kind("HorizontalPodAutoscaler")
    assert hpa.doc["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": api.name}
    assert hpa.doc["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa.doc["spec"]["metrics"]] == ["cpu"]
    covered = {
        target.name
        for pdb in of_kind("PodDisruptionBudget")
        for target in (api, worker)
        if pdb.doc["spec"]["selector"]["matchLabels"].items() <= pod_labels(target).items()
    }
    assert covered == {api.name, worker.name}


def configmap() -> dict[str, str]:
    [cm] = of_kind("ConfigMap")
    data: dict[str, str] = cm.doc["data"]
    return data


def test_worker_grace_period_outlasts_a_provider_call(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in configmap().items():
        monkeypatch.setenv(key, value)
    timeout_s = Settings().providers.timeout_s
    grace = pod_spec(workload("worker"))["terminationGracePeriodSeconds"]
    assert grace >= timeout_s + 30, "calls in flight on SIGTERM must be able to finish and be written"


def setting_exists(variable: str) -> bool:
    """Whether ``DEFEATER_GROUP__FIELD`` names a field of Settings (pydantic-settings ignores unknown ones)."""
    model: type[BaseModel] = Settings
    *groups, leaf = variable.removeprefix("DEFEATER_").lower().split("__")
    for group in groups:
        field = model.model_fields.get(group)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return False
        model = field.annotation
    return leaf in model.model_fields


def test_configmap_holds_real_non_secret_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = configmap()
    for key, value in data.items():
        assert key.startswith("DEFEATER_") and setting_exists(key), f"{key} is no setting of service/settings.py"
        assert not SECRET_ENV.search(key) and key not in SECRET_URLS, f"{key} belongs in a Secret"
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.should_auto_migrate is False, "only the migration Job changes the schema"


# ---- secrets -------------------------------------------------------------------------------------------------


def env_vars() -> Iterator[tuple[Manifest, dict[str, Any]]]:
    for m in WORKLOADS:
        for c in containers(m):
            for var in c.get("env", []):
                yield m, var


def secret_refs() -> set[tuple[str, str]]:
    """Every (Secret name, key) the applied manifests read."""
    refs = {(ref["name"], ref["key"]) for _, var in env_vars() if (ref := var.get("valueFrom", {}).get("secretKeyRef"))}
    refs |= {(r["name"], r["key"]) for m in of_kind("TriggerAuthentication") for r in m.doc["spec"]["secretTargetRef"]}
    return refs


def test_no_manifest_holds_a_secret_value() -> None:
    for m, var in env_vars():
        if SECRET_ENV.search(var["name"]) or var["name"] in SECRET_URLS:
            assert "value" not in var, f"{m.id}: {var['name']} has a literal value"
            assert "secretKeyRef" in var.get("valueFrom", {}), f"{m.id}: {var['name']} must come from a Secret"
    assert not of_kind("Secret"), "Secrets are created out of band, never applied from the repository"
    for path in [*manifest_files(), K8S / KUSTOMIZATION, ROOT / "Dockerfile"]:
        assert not KEY_SHAPES.search(path.read_text()), f"{path.name} holds something shaped like a provider key"


def test_secrets_are_referenced_by_name_and_key() -> None:
    refs = secret_refs()
    assert {("defeater-database", v) for v in SECRET_URLS} <= refs
    provider_keys = {v for v in DEFAULT_KEY_ENV.values() if v}
    assert {("defeater-provider-keys", v) for v in provider_keys} <= refs
    for m, var in env_vars():
        ref = var.get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("name") == "defeater-provider-keys":
            assert var["name"] == ref["key"], f"{m.id}: a key's variable is named as model configs' api_key_env"
    worker_env = {var["name"] for m, var in env_vars() if m == workload("worker")}
    api_env = {var["name"] for m, var in env_vars() if m == workload("api")}
    assert provider_keys <= worker_env
    assert not provider_keys & api_env, "the api calls no provider: it gets no keys"


def test_every_provider_key_the_workers_get_may_be_sent_somewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key in the workers' environment that the key rules do not list could never be used: the two lists agree."""
    for key, value in configmap().items():
        monkeypatch.setenv(key, value)
    key_hosts = Settings().providers.key_hosts
    worker_keys = {
        ref["key"]
        for m, var in env_vars()
        if m == workload("worker")
        if (ref := var.get("valueFrom", {}).get("secretKeyRef", {})).get("name") == "defeater-provider-keys"
    }
    assert worker_keys and worker_keys <= set(key_hosts)
    assert all(hosts for hosts in key_hosts.values())


def test_example_secret_has_placeholders_and_every_referenced_key() -> None:
    examples = [m for m in ALL if m.file == EXAMPLE_SECRET]
    assert examples and all(m.kind == "Secret" for m in examples)
    defined: set[tuple[str, str]] = set()
    for m in examples:
        assert "data" not in m.doc, f"{m.id}: stringData only, so that placeholders stay readable"
        for key, value in m.doc["stringData"].items():
            defined.add((m.name, key))
            password = urlsplit(value).password if "://" in value else None
            if SECRET_ENV.search(key) or password is not None:
                assert PLACEHOLDER in value, f"{m.id}: {key} must be a placeholder"
            if password is not None:
                assert password == PLACEHOLDER, f"{m.id}: {key} carries a password"
    assert secret_refs() <= defined, "the example must show every key the manifests read"


# ---- Dockerfile ----------------------------------------------------------------------------------------------


class Instruction(NamedTuple):
    keyword: str
    arguments: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, grouped by stage (each starts with FROM)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append(Instruction(keyword.upper(), arguments.strip()))
    return stages


def last(stage: list[Instruction], keyword: str) -> str:
    found = [i.arguments for i in stage if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def test_dockerfile_is_multi_stage_and_runs_defeater_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a final stage"
    for stage in stages:
        assert stage[0].arguments.split()[0] == "python:3.11-slim"
    builder, final = stages[0], stages[-1]
    assert any("pip wheel" in i.arguments for i in builder if i.keyword == "RUN"), "the builder builds a wheel"
    assert any(i.keyword == "COPY" and i.arguments.startswith("--from=") for i in final), "the final stage copies"
    user = last(final, "USER").split(":")[0]
    assert user.isdigit() and int(user) == UID, "a numeric non-root USER, so that runAsNonRoot can verify it"
    assert json.loads(last(final, "ENTRYPOINT")) == ["defeater"]
    assert json.loads(last(final, "CMD")) == ["api", "--host", "0.0.0.0", "--port", "8000"]
    [port] = pod_spec(workload("api"))["containers"][0]["ports"]
    assert last(final, "EXPOSE").split() == [str(port["containerPort"])]
    assert "PYTHONUNBUFFERED=1" in " ".join(i.arguments for i in final if i.keyword == "ENV")


def test_dockerignore_lets_in_what_the_builder_copies() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*", "an allow-list: nothing enters the build context unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = [i.arguments.split()[:-1] for i in dockerfile_stages()[0] if i.keyword == "COPY"]
    for sources in copied:
        for source in sources:
            assert source.removeprefix("./").rstrip("/") in allowed, f"{source} is not in the build context"


# ---- the commands the image runs -----------------------------------------------------------------------------


class Run(NamedTuple):
    returncode: int
    output: str


@pytest.fixture(scope="module")
def cli() -> dict[str, Run]:
    """The installed ``defeater <args> --help`` for the commands the image and manifests run, side by side (each
    process spends seconds importing the provider SDKs)."""
    exe = Path(sys.executable).parent / "defeater"
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}
    commands = {"": [], "db upgrade": ["db", "upgrade"], "worker": ["worker"]}
    running = {
        name: subprocess.Popen(
            [exe, *args, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for name, args in commands.items()
    }
    results = {}
    try:
        for name, process in running.items():
            output, _ = process.communicate(timeout=120)
            results[name] = Run(process.returncode, output)
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def command_names(help_text: str) -> set[str]:
    """The sub-command names in typer's help table (lines ``│ name   description``)."""
    return set(re.findall(r"^\W ([a-z][\w-]*)\s{2,}", help_text, flags=re.MULTILINE))


def test_defeater_has_the_commands_the_manifests_run(cli: dict[str, Run]) -> None:
    top = cli[""]
    assert top.returncode == 0, top.output
    assert {"api", "db"} <= command_names(top.output), top.output
    upgrade = cli["db upgrade"]
    assert upgrade.returncode == 0, upgrade.output
    assert "[required]" not in upgrade.output, "the Job runs `defeater db upgrade` with no options"


def test_defeater_api_takes_the_address_the_pod_listens_on() -> None:
    # in-process: a fourth subprocess would cost seconds, and `api` is a command of the app itself
    from service.cli import app

    result = CliRunner().invoke(app, ["api", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output


def test_defeater_worker_exists(cli: dict[str, Run]) -> None:
    if cli["worker"].returncode != 0:
        pytest.skip(
            "`defeater worker --help` failed: the worker command lands separately; until it does, the worker "
            "Deployment's args ['worker'] name no command"
        )
    assert "worker" in command_names(cli[""].output)
    # the Deployment runs it bare: no required argument or option
    worker = cli["worker"].output
    assert re.search(r"Usage: defeater worker \[OPTIONS\]\s*$", worker, flags=re.MULTILINE), worker
    assert "[required]" not in worker, worker
