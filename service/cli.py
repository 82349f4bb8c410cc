"""The ``defeater`` command line. Local commands work on the configured database through the service layer."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer import rich_utils
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer bundles its own click
from typer.core import TyperGroup

from service.auth import service as tokens
from service.auth.scopes import Scope
from service.client_file import load_configs
from service.datasets import service as datasets
from service.datasets.parsing import detect_format, read_records, validate_records
from service.db.migrate import current_revision, upgrade
from service.db.models import Family
from service.db.session import create_engine, create_sessionmaker
from service.errors import DefeaterError, FieldError, ValidationFailed, field_errors
from service.exit_codes import ExitCode
from service.jobs import service as jobs
from service.jobs.schemas import JobCreate, JobFilters, JobRead
from service.model_configs import service as configs
from service.model_configs.schemas import ModelConfigCreate
from service.settings import Settings


class _ExitCodes(TyperGroup):
    """The command group, leaving with a code of ``ExitCode`` whatever happens. Click's own usage errors (an unknown
    option, a missing argument) exit 2, which is the gate's "inconclusive": they are shown as click shows them and
    exit ``ERROR`` instead."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command; standalone (as ``defeater``), exit with its code."""
        run = functools.partial(super().main, args, prog_name, complete_var, False, windows_expand_args, **extra)
        if not standalone_mode:
            return run()
        try:
            code = run()
        except NoArgsIsHelpError as exc:  # `defeater` or `defeater jobs` alone: the help, and still a usage error
            exc.show()
            code = ExitCode.ERROR
        except ClickException as exc:
            rich_utils.rich_format_error(exc)
            code = ExitCode.ERROR
        except (typer.Abort, KeyboardInterrupt):
            err.print("interrupted")
            code = ExitCode.INTERRUPTED
        sys.exit(code if isinstance(code, int) else ExitCode.OK)


app = typer.Typer(
    name="defeater", help="Blind Refusal evaluations at full scale.", no_args_is_help=True, cls=_ExitCodes
)
db_app = typer.Typer(help="The ledger's schema.", no_args_is_help=True)
datasets_app = typer.Typer(help="Import and list datasets.", no_args_is_help=True)
configs_app = typer.Typer(help="Register and list model configs.", no_args_is_help=True)
jobs_app = typer.Typer(help="Create, inspect and cancel jobs on the local ledger.", no_args_is_help=True)
tokens_app = typer.Typer(help="Make, list and revoke API tokens (on the database directly).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(datasets_app, name="datasets")
app.add_typer(configs_app, name="configs")
app.add_typer(jobs_app, name="jobs")
app.add_typer(tokens_app, name="tokens")

# wide enough for the results table when the output is a file or a CI log
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
P = ParamSpec("P")
R = TypeVar("R")
PROVIDER_ALIASES = {"gemini": "google", "compatible": "openai_compatible"}


def fail(message: str, errors: list[FieldError] | None = None, code: int = ExitCode.ERROR) -> typer.Exit:
    """Print ``error: message`` (and each field problem) on stderr; the ``typer.Exit`` to raise with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    if errors and len(errors) > 1:
        for e in errors:
            err.print(f"  - {e}", highlight=False)
    return typer.Exit(code)


def command(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """Run an async command; turn every expected failure into a clear message and exit code ``ERROR`` (5)."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except DefeaterError as exc:
            raise fail(exc.detail, exc.errors) from None
        except ValidationError as exc:
            errors = field_errors(exc.errors(include_url=False))
            raise fail(f"{errors[0]}", errors) from None
        except SettingsError as exc:  # a DEFEATER_ variable that is not the JSON its setting takes
            raise fail(f"a setting in the environment cannot be read: {exc}") from None
        except (OperationalError, ConnectionError, socket.gaierror) as exc:
            where = make_url(Settings().database_url).render_as_string(hide_password=True)
            raise fail(f"cannot reach the database at {where}: {getattr(exc, 'orig', None) or exc}") from None
        except OSError as exc:
            raise fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": ")) from None

    return wrapper


def missing_ledger(settings: Settings) -> Path | None:
    """The SQLite file the settings name, when it does not exist (None for Postgres and in-memory SQLite)."""
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path


@asynccontextmanager
async def local_db(
    settings: Settings | None = None, *, create: bool = True
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the configured database, schema checked (SQLite is migrated), starter dataset present.

    ``create=False`` (commands that only read, or change what exists) refuses a SQLite file that does not exist,
    rather than making an empty ledger there: a mistyped path must not look like a ledger with nothing in it.
    """
    settings = settings or Settings()
    missing = None if create else missing_ledger(settings)
    if missing is not None:
        raise DefeaterError(
            f"no ledger at {missing}: the file does not exist (check DEFEATER_DATABASE_URL; `defeater run`, "
            "`defeater demo` and `defeater datasets import` create a ledger)"
        )
    engine = create_engine(settings)
    try:
        if settings.should_auto_migrate:
            await upgrade(engine)
        elif await current_revision(engine) is None:
            raise DefeaterError("the database has no schema yet: run `defeater db upgrade` first")
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session:
            await datasets.ensure_starter(session)
            await session.commit()
        yield sessionmaker
    finally:
        await engine.dispose()


@asynccontextmanager
async def local_session(*, create: bool = True) -> AsyncIterator[AsyncSession]:
    """One session on the configured database (see ``local_db``)."""
    async with local_db(create=create) as sessionmaker, sessionmaker() as session:
        yield session


# ---- db ---------------------------------------------------------------------------------------------------


@db_app.command("upgrade")
@command
async def db_upgrade(revision: Annotated[str, typer.Option(help="target revision")] = "head") -> None:
    """Run the schema migrations on DEFEATER_DATABASE_URL."""
    settings = Settings()
    engine = create_engine(settings, pooled=False)
    try:
        await upgrade(engine, revision)
        out.print(f"database at revision {await current_revision(engine)}")
    finally:
        await engine.dispose()


# ---- datasets ---------------------------------------------------------------------------------------------


@datasets_app.command("import")
@command
async def datasets_import(
    file: Annotated[Path, typer.Argument(help="a JSONL, JSON or CSV file of cases")],
    name: Annotated[str, typer.Option("--name", "-n", help="the dataset's name")],
    version: Annotated[str | None, typer.Option(help="defaults to the checksum's first 12 characters")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    output: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Import a file of cases, all or nothing: a bad line refuses the file, naming the line and the field."""
    settings = Settings()
    data = file.read_bytes()
    try:
        records = read_records(data, detect_format(file.name, None, data), settings.imports)
        validated = validate_records(records, settings.imports)
    except DefeaterError as exc:
        exc.detail = f"{file}: {exc.detail}"
        raise
    async with local_session() as session:
        outcome = await datasets.import_cases(session, validated, name=name, version=version, description=description)
        await session.commit()
    d = outcome.dataset
    result = {
        "id": str(d.id),
        "name": d.name,
        "version": d.version,
        "case_count": d.case_count,
        "checksum": d.checksum,
        "created": outcome.created,
        "family_counts": validated.family_counts(),
        "warning_count": validated.warning_count,
    }
    if output == "json":
        out.print_json(json.dumps(result))
        return
    verb = "imported" if outcome.created else "already present:"
    out.print(f"{verb} dataset [bold]{d.name}[/] version {d.version} ({d.case_count} cases), id {d.id}")
    for family, n in sorted(validated.family_counts().items()):
        out.print(f"  {family:<24} {n:>6}")
    if validated.warning_count:
        out.print(f"{validated.warning_count} value(s) kept with a warning, e.g.:")
        for w in validated.warnings[:5]:
            out.print(f"  line {w.line}: {w.field}: {w.message}", highlight=False)


@datasets_app.command("list")
@command
async def datasets_list() -> None:
    """The datasets in the ledger."""
    from service.datasets import repository

    async with local_session(create=False) as session:
        rows = await repository.list_page(session, 1000, None)
    table = Table("name", "version", "cases", "id", "built in")
    for d in rows:
        table.add_row(d.name, d.version, str(d.case_count), str(d.id), "yes" if d.builtin else "")
    out.print(table)


# ---- configs ----------------------------------------------------------------------------------------------


def parse_model_spec(spec: str) -> ModelConfigCreate:
    """``provider:model[@base_url]`` -> a config named after it, with default params."""
    provider, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValidationFailed(
            f"--model {spec!r}: expected provider:model[@base_url], e.g. openai:gpt-5.4",
            [FieldError("--model", "expected provider:model[@base_url]")],
        )
    model, _, base_url = rest.partition("@")
    provider = PROVIDER_ALIASES.get(provider, provider)
    try:
        return ModelConfigCreate.model_validate(
            {"name": spec, "provider": provider, "model": model, "base_url": base_url or None}
        )
    except ValidationError as exc:
        errors = [FieldError(f"--model {spec}: {e.field}", e.message) for e in field_errors(exc.errors())]
        raise ValidationFailed(str(errors[0]), errors) from None


@configs_app.command("register")
@command
async def configs_register(
    file: Annotated[Path, typer.Argument(help="a YAML or JSON file: one config, or a list of them")],
) -> None:
    """Register model configs from a YAML or JSON file; identical ones already registered are found again.

    Every config is checked before any is registered; a problem names its line of the file."""
    bodies = load_configs(file)
    providers = Settings().providers
    async with local_session() as session:
        for body in bodies:
            registered = await configs.register(session, body, providers)
            state = "registered" if registered.created else "already registered"
            out.print(f"{state}: {registered.config.name} ({registered.config.id})")
        await session.commit()


@configs_app.command("list")
@command
async def configs_list() -> None:
    """The registered model configs."""
    from service.model_configs import repository

    async with local_session(create=False) as session:
        rows = await repository.list_page(session, 10_000, None)
    table = Table("name", "provider", "model", "key variable", "fingerprint", "id")
    for c in rows:
        table.add_row(c.name, c.provider.value, c.model, c.api_key_env or "", c.fingerprint[:12], str(c.id))
    out.print(table)


# ---- jobs -------------------------------------------------------------------------------------------------


ModelOpt = Annotated[list[str], typer.Option("--model", "-m", help="provider:model[@base_url]; repeatable")]
ConfigOpt = Annotated[list[str], typer.Option("--config", "-c", help="a registered config's name or id")]
JudgeOpt = Annotated[list[str], typer.Option(help="provider:model or a config name; default: the service's")]
DatasetOpt = Annotated[str, typer.Option(help="id, name or name@version")]
FamilyOpt = Annotated[list[Family], typer.Option(help="only these families; repeatable")]
AuthorityOpt = Annotated[
    list[str], typer.Option("--authority-type", "--authority", help="only these authority types; repeatable")
]
CaseIdOpt = Annotated[list[str], typer.Option("--case-id", help="only these cases (their ids); repeatable")]
DualUseOpt = Annotated[bool | None, typer.Option("--dual-use/--no-dual-use", help="only (non-)dual-use cases")]
LimitOpt = Annotated[int | None, typer.Option(help="a stable subset of at most N cases")]
# flags are named after the API's fields (samples_per_case: --samples-per-case); the older short names stay aliases
SamplesOpt = Annotated[int, typer.Option("--samples-per-case", "--samples", help="samples per case")]
BudgetOpt = Annotated[
    float | None,
    typer.Option("--budget-usd", "--budget", help="spend limit in USD; the job pauses when it is reached"),
]
FormatOpt = Annotated[str, typer.Option("--format", help="table or json")]


@dataclass(frozen=True)
class JobFlags:
    """What the job-creating commands take from their flags."""

    model: list[str]
    config: list[str]
    judge: list[str]
    dataset: str
    family: list[Family]
    authority: list[str]
    dual_use: bool | None
    limit: int | None
    samples: int
    budget: float | None
    use_cache: bool = True
    case_ids: list[str] = field(default_factory=list)


async def create_job_from_flags(session: AsyncSession, flags: JobFlags, settings: Settings) -> JobRead:
    """Register the ``--model`` configs, resolve the rest, and create the job with all its requests. Commits."""
    if not flags.model and not flags.config:
        raise ValidationFailed("give at least one --model provider:model or --config NAME")
    ds = await datasets.resolve(session, flags.dataset)
    targets = [
        str((await configs.register(session, parse_model_spec(m), settings.providers)).config.id) for m in flags.model
    ]
    targets += [str((await configs.resolve(session, c)).id) for c in flags.config]
    judges = [await _judge_id(session, j, settings) for j in flags.judge] or None
    filters = JobFilters(
        families=flags.family or None,
        authority_types=flags.authority or None,
        dual_use=flags.dual_use,
        case_ids=flags.case_ids or None,
        limit=flags.limit,
    )
    body = JobCreate(
        dataset_id=str(ds.id),
        model_config_ids=targets,
        judge_config_ids=judges,
        filters=filters,
        samples_per_case=flags.samples,
        budget_usd=flags.budget,
        use_cache=flags.use_cache,
    )
    created = await jobs.create_job(session, body, settings)
    await session.commit()
    return await jobs.read_job(session, created.job)


@jobs_app.command("create")
@command
async def jobs_create(
    model: ModelOpt = [],  # noqa: B006
    config: ConfigOpt = [],  # noqa: B006
    judge: JudgeOpt = [],  # noqa: B006
    dataset: DatasetOpt = datasets.STARTER_NAME,
    family: FamilyOpt = [],  # noqa: B006
    authority: AuthorityOpt = [],  # noqa: B006
    case_id: CaseIdOpt = [],  # noqa: B006
    dual_use: DualUseOpt = None,
    limit: LimitOpt = None,
    samples: SamplesOpt = 1,
    budget: BudgetOpt = None,
    output: FormatOpt = "table",
) -> None:
    """Create a job with all its work units, waiting in the ledger."""
    flags = JobFlags(
        model, config, judge, dataset, family, authority, dual_use, limit, samples, budget, case_ids=case_id
    )
    started = time.perf_counter()
    async with local_session() as session:
        status = await create_job_from_flags(session, flags, Settings())
    elapsed = time.perf_counter() - started
    if output == "json":
        out.print_json(status.model_dump_json())
        return
    out.print(f"created job [bold]{status.id}[/] ({status.case_count} cases) in {elapsed:.2f} s")
    print_status(status)


async def _judge_id(session: AsyncSession, ref: str, settings: Settings) -> str:
    if ":" in ref:
        try:
            return str((await configs.resolve(session, ref)).id)
        except DefeaterError:
            return str((await configs.register(session, parse_model_spec(ref), settings.providers)).config.id)
    return str((await configs.resolve(session, ref)).id)


@jobs_app.command("show")
@command
async def jobs_show(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    output: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """A job's state and progress."""
    async with local_session(create=False) as session:
        status = await jobs.read_job(session, await jobs.get_job(session, _uuid(job_id, "JOB")))
    if output == "json":
        out.print_json(status.model_dump_json())
    else:
        print_status(status)


@jobs_app.command("list")
@command
async def jobs_list() -> None:
    """Jobs, newest first."""
    from service.jobs import repository

    async with local_session(create=False) as session:
        rows = await repository.list_page(session, 100, None, None)
    table = Table("id", "state", "cases", "requests", "created")
    for j in rows:
        table.add_row(
            str(j.id),
            j.state.value,
            str(j.case_count),
            str(j.request_count),
            f"{j.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@jobs_app.command("cancel")
@command
async def jobs_cancel(job_id: Annotated[str, typer.Argument(help="the job's id")]) -> None:
    """Stop dispatching a job's work."""
    async with local_session(create=False) as session:
        job = await jobs.cancel_job(session, await jobs.get_job(session, _uuid(job_id, "JOB")))
        await session.commit()
    out.print(f"job {job.id} is {job.state.value}")


def _uuid(value: str, name: str) -> Any:
    import uuid

    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationFailed(f"{name}: {value!r} is not a job id", [FieldError(name, "not a UUID")]) from None


def print_status(status: JobRead, state: str | None = None) -> None:
    """The job's progress by phase, throughput, ETA and spend; ``state`` overrides the ledger's (a stopped run)."""
    table = Table(
        "phase",
        "total",
        "pending",
        "leased",
        "succeeded",
        "failed",
        title=f"job {status.id}: {state or status.state.value}",
    )
    for phase, c in (("requests", status.progress.requests), ("judgements", status.progress.judgements)):
        table.add_row(phase, *(str(v) for v in (c.total, c.pending, c.leased, c.succeeded, c.failed)))
    out.print(table)
    eta = f"{status.eta_seconds:.0f} s" if status.eta_seconds is not None else "-"
    # the service counts units that became final per second (answers from the cache too), not provider calls
    out.print(f"units/s {status.calls_per_second:.2f}   ETA {eta}   spend ${status.cost_usd:.4f}")


@app.command("results")
@command
async def results_command(
    job_id: Annotated[str, typer.Argument(help="the job's id")],
    output: FormatOpt = "table",
    html: Annotated[Path | None, typer.Option(help="also write a self-contained HTML report here")] = None,
) -> None:
    """A job's results: rates with Wilson 95% intervals per config (`--format json`: every group).

    With ``DEFEATER_URL`` set they come from that service (with ``DEFEATER_API_TOKEN``), else the local ledger.
    """
    from service.gates.schemas import GateResult
    from service.gates.service import evaluate_job
    from service.results.display import print_results
    from service.results.report import render_html
    from service.results.service import results

    gate: GateResult | None = None
    if os.environ.get("DEFEATER_URL"):  # a client of a running service, like `submit`, `wait` and `gate`
        from service.client import ServiceClient
        from service.results.schemas import Results

        with ServiceClient() as client:
            path = f"/v1/jobs/{_uuid(job_id, 'JOB')}"
            figures = Results.model_validate(client.call("GET", f"{path}/results"))
            if html is not None and client.call("GET", path).get("gate"):
                gate = GateResult.model_validate(client.call("GET", f"{path}/gate"))
    else:
        async with local_session(create=False) as session:
            job = await jobs.get_job(session, _uuid(job_id, "JOB"))
            figures = await results(session, job)
            if html is not None and job.gate is not None:
                gate = await evaluate_job(session, job)
    if html is not None:
        html.write_text(render_html(figures, title=f"Defeater results: job {figures.job_id}", gate=gate))
    if output == "json":
        out.print_json(figures.model_dump_json())
        return
    print_results(out, figures)
    if html is not None:
        out.print(f"report: {html}")


# ---- tokens -----------------------------------------------------------------------------------------------


ScopeOpt = Annotated[
    list[Scope], typer.Option("--scope", "-s", help="read, submit or admin; repeatable (admin ⊇ submit ⊇ read)")
]


@tokens_app.command("create")
@command
async def tokens_create(
    name: Annotated[str, typer.Option("--name", "-n", help="who or what uses it, e.g. release-ci")],
    scope: ScopeOpt = [],  # noqa: B006
    output: FormatOpt = "table",
) -> None:
    """Make an API token and print it, this once: only its hash is stored, so it cannot be shown again."""
    from service.auth.schemas import TokenCreate, TokenRead

    if not scope:
        raise ValidationFailed("give at least one --scope: read, submit or admin", [FieldError("--scope", "missing")])
    body = TokenCreate(name=name, scopes=scope)
    async with local_session() as session:
        issued = await tokens.create_token(session, body)
        await session.commit()
    if output == "json":
        shown = TokenRead.model_validate(issued.row).model_dump(mode="json") | {"token": issued.plaintext}
        out.print_json(json.dumps(shown))
        return
    row = issued.row
    out.print(f"created token [bold]{row.name}[/] (scopes: {', '.join(row.scopes)}), id {row.id}:", highlight=False)
    out.print(issued.plaintext, markup=False, highlight=False)
    out.print(
        "It is shown this once: store it now. Send it as `Authorization: Bearer <token>`, or set DEFEATER_API_TOKEN "
        "for the defeater client commands.",
        markup=False,
        highlight=False,
    )


@tokens_app.command("list")
@command
async def tokens_list() -> None:
    """Every token: name, first characters, scopes and dates. Never the token."""
    from service.auth import repository

    async with local_session(create=False) as session:
        rows = await repository.list_all(session)
    table = Table("name", "prefix", "scopes", "created", "last used", "revoked", "id")
    for t in rows:
        dates = [f"{d:%Y-%m-%d %H:%M}" if d else "" for d in (t.created_at, t.last_used_at, t.revoked_at)]
        table.add_row(t.name, t.prefix, ",".join(t.scopes), *dates, str(t.id))
    out.print(table)


@tokens_app.command("revoke")
@command
async def tokens_revoke(
    ref: Annotated[str, typer.Argument(metavar="NAME_OR_ID", help="the token's name or id")],
) -> None:
    """Revoke a token: requests carrying it get 401 from now on."""
    async with local_session(create=False) as session:
        row = await tokens.resolve(session, ref)
        already = row.revoked_at is not None
        await tokens.revoke(session, row)
        await session.commit()
    state = "was already revoked" if already else "revoked"
    out.print(f"token {row.name} ({row.prefix}…) {state} at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC", highlight=False)


# ---- service ----------------------------------------------------------------------------------------------


def _write_or_check(path: Path, text: str, command: str, check: bool) -> None:
    """Write a generated file, or with ``check`` exit FAILED when the file differs from what would be written."""
    if check:
        if (path.read_text() if path.exists() else "") != text:
            err.print(f"{path} is stale: run `defeater {command}`")
            raise typer.Exit(ExitCode.FAILED)
        out.print(f"{path} is up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    out.print(f"wrote {path}")


@app.command("openapi")
def openapi_command(
    path: Annotated[Path, typer.Option("--out", help="where to write the spec")] = Path("openapi/openapi.json"),
    check: Annotated[bool, typer.Option(help="exit 1 if the file differs instead of writing it")] = False,
) -> None:
    """Write the API's OpenAPI spec (the file CI compares with the app)."""
    from service.openapi_spec import render

    _write_or_check(path, render(), "openapi", check)


@app.command("schema")
def schema_command(
    path: Annotated[Path, typer.Option("--out", help="where to write it")] = Path("openapi/submission.schema.json"),
    check: Annotated[bool, typer.Option(help="exit 1 if the file differs instead of writing it")] = False,
) -> None:
    """Write the JSON Schema of `defeater submit`'s file (docs/submission.md describes it)."""
    from service.client_file import submission_schema

    _write_or_check(path, submission_schema(), "schema", check)


@app.command("fake-provider")
def fake_provider_command(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8900,
    mode: Annotated[str, typer.Option(help="simulated or replay")] = "simulated",
    replay_dir: Annotated[Path | None, typer.Option(help="a folder shaped like the study's data")] = None,
    config: Annotated[Path | None, typer.Option(help="a JSON file of FakeConfig settings")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
) -> None:
    """Serve the fake OpenAI / Anthropic / Gemini provider used by tests, the demo and benchmarks."""
    from workers.providers.fake import FakeConfig, serve

    values: dict[str, Any] = json.loads(config.read_text()) if config else {}
    values["mode"] = mode
    if replay_dir is not None:
        values["replay_dir"] = str(replay_dir)
    try:
        settings = FakeConfig.model_validate(values)
    except ValidationError as exc:
        raise fail(str(field_errors(exc.errors(include_url=False), model=FakeConfig)[0])) from None
    out.print(f"fake provider ({settings.mode}) on http://{host}:{port}")
    serve(settings, host=host, port=port)


@app.command("worker")
def worker_command() -> None:
    """Run an arq worker: target calls, judge calls and the reconciler, for the jobs in Postgres (needs Redis)."""
    import uvloop
    from arq.worker import Worker

    from workers.distributed import worker_settings

    settings = Settings()
    if not settings.redis_url:
        raise fail("DEFEATER_REDIS_URL is not set: `defeater worker` serves a distributed deployment")
    asyncio.set_event_loop(uvloop.new_event_loop())  # arq runs on the loop set here
    Worker(**worker_settings(settings)).run()


@app.command("api")
def api_command(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Serve the REST API (uvicorn). Tokens are required, except embedded (no Redis) on a loopback address."""
    import uvicorn

    from service.app import create_app
    from service.auth.binding import serving_auth

    settings = Settings()
    try:
        decided = serving_auth(settings, host)
    except DefeaterError as exc:
        raise fail(exc.detail) from None
    auth = settings.auth.model_copy(update={"required": decided.tokens_required})
    state = "required" if decided.tokens_required else "off"
    err.print(f"API tokens {state} ({decided.reason})", highlight=False, markup=False)
    uvicorn.run(create_app(settings.model_copy(update={"auth": auth})), host=host, port=port, log_level="info")


# `defeater --help` in the order a newcomer meets the commands, in panels by where they act
HELP_PANELS: dict[str, tuple[str, ...]] = {
    "Start here (embedded, on this machine)": ("demo", "run", "retry", "results"),
    "A running service (DEFEATER_URL, DEFEATER_API_TOKEN)": ("submit", "status", "wait", "cancel", "gate"),
    "Serving (the deployment's processes)": ("api", "worker", "fake-provider", "db", "tokens"),
    "Generated files": ("openapi", "schema"),
    # sub-command groups: typer lists them after the commands
    "The local ledger (DEFEATER_DATABASE_URL)": ("datasets", "configs", "jobs"),
}


def arrange_help(typer_app: typer.Typer) -> None:
    """Order the commands and sub-commands as ``HELP_PANELS`` lists them, each in its panel."""
    order = [name for names in HELP_PANELS.values() for name in names]
    panel = {name: title for title, names in HELP_PANELS.items() for name in names}

    def rank(name: str | None) -> int:
        return order.index(name) if name in order else len(order)

    typer_app.registered_commands.sort(key=lambda c: rank(c.name))
    typer_app.registered_groups.sort(key=lambda g: rank(g.name))
    for command_info in typer_app.registered_commands:
        command_info.rich_help_panel = panel.get(command_info.name or "", command_info.rich_help_panel)
    for group_info in typer_app.registered_groups:
        group_info.rich_help_panel = panel.get(group_info.name or "", group_info.rich_help_panel)


def main() -> None:
    """Console entry point: every outcome leaves with a code of ``service.exit_codes.ExitCode``."""
    from service import cli_client, cli_demo, cli_run  # noqa: F401  (register `defeater run` and `defeater demo`)

    cli_client.register(app)  # `defeater submit`, `status`, `wait`, `gate`, `cancel`: a client of a running service
    arrange_help(app)
    app()
