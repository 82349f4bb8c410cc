"""The results table the CLI prints (``run``, ``results``, ``demo``): headline figures per config."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from service.db.models import JobState
from service.results.schemas import Difference, Rate, Results

FINAL_STATES = frozenset(state.value for state in JobState if state.final)


def _pct(rate: Rate) -> str:
    if rate.value is None or rate.ci95 is None:
        return "-"
    return f"{100 * rate.value:.1f}% [{100 * rate.ci95[0]:.0f}-{100 * rate.ci95[1]:.0f}]"


def _gap(gap: Difference) -> str:
    if gap.value is None or gap.ci95 is None:
        return "-"
    return f"{100 * gap.value:+.1f} pp [{100 * gap.ci95[0]:+.0f}, {100 * gap.ci95[1]:+.0f}]"


def results_table(results: Results) -> Table:
    """One row per config: helps on defeated and control cases, the gap, refusal, engagement, blind refusal."""
    table = Table(
        "config",
        "n def",
        "helps def",
        "helps ctrl",
        "helps gap",
        "refusal def",
        "engages def",
        "rule-blind def",
        "filtered/errored/unjudged",
        title=f"job {results.job_id}: {results.state}; % of judged answers [Wilson 95%]; def = defeated cases",
    )
    for c in results.by_model_config:
        d = c.defeated
        table.add_row(
            c.name,
            str(d.n),
            _pct(d.helps_rate),
            _pct(c.control.helps_rate),
            _gap(c.helps_gap),
            _pct(d.refusal_rate),
            _pct(d.engagement_rate),
            _pct(d.categories["pure_rule_blind"]),
            f"{c.all.content_filtered} / {c.all.errored} / {c.all.unjudged}",
        )
    return table


def print_results(console: Console, results: Results) -> None:
    """The results table, and what its open units mean: work to come, or work that an ended job will never do."""
    console.print(results_table(results))
    open_units = results.overall.all.open
    if not open_units:
        return
    if results.state in FINAL_STATES:
        console.print(f"{open_units} units were never run: the job is {results.state}", style="yellow")
    else:
        console.print(f"{open_units} units are still open: figures will change", style="yellow")
