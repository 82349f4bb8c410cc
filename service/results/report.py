"""A job's results as one self-contained HTML page: a headline table, three inline SVG charts, the comparisons.

The page carries its own CSS and SVG and nothing else (no scripts, fonts, images or links), so it renders offline.
Every piece of text from the results is escaped; a figure with no judged answers is shown as a dash.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from service.db.models.enums import Family
from service.gates import text
from service.gates.schemas import CheckResult, ConfigGate, GateResult
from service.results.schemas import CATEGORY_NAMES, Cell, Comparison, ConfigResult, Difference, Group, Rate, Results

DASH: Final = "–"
FAMILIES: Final = tuple(family.value for family in Family)

# Okabe-Ito: distinct under the common colour-vision deficiencies. (fill, text drawn on it)
CATEGORY_COLOURS: Final[Mapping[str, tuple[str, str]]] = {
    "helps": ("#009E73", "#000"),
    "pure_rule_blind": ("#D55E00", "#fff"),
    "safety_grounded": ("#0072B2", "#fff"),
    "engaged_only": ("#E69F00", "#000"),
    "engaged_and_safety": ("#CC79A7", "#000"),
}
DEFEATED_COLOUR: Final = "#0072B2"
CONTROL_COLOUR: Final = "#D55E00"
HEAT_STRONG: Final = (8, 69, 148)  # the heatmap runs from white (0%) to this blue (100%)

NAME_CHARS: Final = 30  # config names longer than this are clipped in charts and tables, whole in a tooltip
HEAT_NAME_CHARS: Final = 22
LABEL_W: Final = 230  # the name column of the bar and dot charts
PLOT_W: Final = 560  # the 0-100% span of the bar and dot charts
HEAT_LABEL_W: Final = 170
HEAT_COL_W: Final = 66
HEAT_ROW_H: Final = 34
HEAT_HEADER_H: Final = 120

CSS: Final = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: #1a1a1a; margin: 24px auto; max-width: 1400px; padding: 0 24px; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 17px; margin: 32px 0 6px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 12px; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.legend { background: #f5f7fa; border-left: 4px solid #0072B2; padding: 8px 14px; max-width: 900px; }
.legend p { margin: 4px 0; }
.note { color: #555; margin: 2px 0 8px; max-width: 900px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { text-align: left; background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.name { max-width: 280px; }
.ci { display: block; color: #666; font-size: 12px; }
.counts { color: #555; }
ul.keys { list-style: none; padding: 0; margin: 4px 0 8px; display: flex; flex-wrap: wrap; gap: 4px 18px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px;
  border: 1px solid rgba(0, 0, 0, 0.25); }
.swatch.round { border-radius: 50%; }
svg.chart { display: block; font-size: 12px; }
svg.chart text { fill: #1a1a1a; }
.verdict.pass { color: #007a55; font-weight: 600; }
.verdict.fail { color: #b03a00; font-weight: 600; }
.verdict.inconclusive { color: #8a6d00; font-weight: 600; }
"""


def render_html(
    results: Results,
    *,
    title: str,
    generated_at: datetime | None = None,
    config_labels: dict[uuid.UUID, str] | None = None,
    gate: GateResult | None = None,
) -> str:
    """Render ``results`` as one self-contained HTML document, with the job's ``gate`` verdict when it has one.

    ``config_labels`` names configs by id, in place of their own ``name``; configs known by neither are shown by
    the start of their id. ``generated_at`` defaults to now (UTC).
    """
    labels = {config.model_config_id: config.name for config in results.by_model_config}
    labels.update(config_labels or {})
    when = generated_at or datetime.now(UTC)
    body = [
        _header(results, title, when),
        *([_gate(gate)] if gate is not None else []),
        _legend(),
        _headline_table(results.by_model_config, labels),
        _heatmap(results, labels),
        _category_bars(results.by_model_config, labels),
        _helps_dots(results.by_model_config, labels),
        _comparisons(results.comparisons, labels),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# -- formatting -------------------------------------------------------------------------------------------------


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def _pct_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0] * 100:.1f}%, {ci[1] * 100:.1f}%]"


def _points(value: float | None) -> str:
    """A difference of two rates, in signed percentage points."""
    return DASH if value is None else f"{value * 100:+.1f} pp"


def _points_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}] pp"


def _p_value(p: float | None) -> str:
    if p is None:
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(labels: Mapping[uuid.UUID, str], config_id: uuid.UUID) -> str:
    return labels.get(config_id) or f"config {str(config_id)[:8]}"


def _words(key: str) -> str:
    return key.replace("_", " ")


def _f(number: float) -> str:
    """A coordinate for SVG: short, and without a trailing ``.0``."""
    return f"{number:.1f}".removesuffix(".0")


# -- header, legend, tables -------------------------------------------------------------------------------------


def _header(results: Results, title: str, when: datetime) -> str:
    facts = [
        ("Job", str(results.job_id)),
        ("State", results.state),
        ("Judge prompt version", results.judge_prompt_version or DASH),
        ("Judge configs", str(len(results.judge_config_ids))),
        ("Generated", when.isoformat(sep=" ", timespec="seconds")),
    ]
    rows = "".join(f"<dt>{_esc(name)}</dt><dd>{_esc(value)}</dd>" for name, value in facts)
    return f'<header>\n<h1>{_esc(title)}</h1>\n<dl class="facts">{rows}</dl>\n</header>'


def _legend() -> str:
    return (
        '<section class="legend">\n'
        "<p><strong>Rates are shares of judged answers</strong> (n): each rate counts only answers the judge "
        "labelled. <em>Defeated</em> cases are the four defeat families; <em>control</em> cases carry a legitimate "
        "rule that should be followed.</p>\n"
        "<p>Small grey figures are <strong>Wilson 95% intervals</strong> for rates, and 95% intervals for "
        "differences. The helps gap is defeated minus control, in percentage points (pp).</p>\n"
        "<p><strong>Content-filtered, errored and unjudged</strong> requests are counted beside the rates, "
        f"<strong>never as refusals</strong>. A {DASH} marks a figure with no judged answers.</p>\n"
        "</section>"
    )


def _name_cell(label: str) -> str:
    return f'<td class="name" title="{_esc(label)}">{_esc(_clip(label, NAME_CHARS))}</td>'


def _num_cell(text: str, detail: str = "", cls: str = "num") -> str:
    extra = f'<span class="ci">{_esc(detail)}</span>' if detail else ""
    return f'<td class="{cls}">{_esc(text)}{extra}</td>'


def _rate_cell(rate: Rate | None) -> str:
    if rate is None:
        return _num_cell(DASH)
    return _num_cell(_pct(rate.value), _pct_ci(rate.ci95))


def _gap_cell(gap: Difference) -> str:
    return _num_cell(_points(gap.value), _points_ci(gap.ci95))


def _table(heads: Sequence[str], rows: Iterable[str], text_columns: int = 1) -> str:
    """A table whose first ``text_columns`` columns hold text and the rest numbers."""
    head = "".join(
        f"<th>{_esc(h)}</th>" if i < text_columns else f'<th class="num">{_esc(h)}</th>' for i, h in enumerate(heads)
    )
    body = "\n".join(f"<tr>{row}</tr>" for row in rows)
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>'


HEADLINE_HEADS: Final = (
    "Config",
    "n judged (defeated)",
    "Helps, defeated",
    "Helps, control",
    "Helps gap",
    "Refusal, defeated",
    "Engagement, defeated",
    "Pure rule-blind, defeated",
    "Content-filtered",
    "Errored",
    "Unjudged",
)


def _headline_row(config: ConfigResult, label: str) -> str:
    defeated, every = config.defeated, config.all
    cells = [
        _name_cell(label),
        _num_cell(str(defeated.n)),
        _rate_cell(defeated.helps_rate),
        _rate_cell(config.control.helps_rate),
        _gap_cell(config.helps_gap),
        _rate_cell(defeated.refusal_rate),
        _rate_cell(defeated.engagement_rate),
        _rate_cell(defeated.categories.get("pure_rule_blind")),
        _num_cell(str(every.content_filtered), cls="num counts"),
        _num_cell(str(every.errored), cls="num counts"),
        _num_cell(str(every.unjudged), cls="num counts"),
    ]
    return "".join(cells)


def _headline_table(configs: Sequence[ConfigResult], labels: Mapping[uuid.UUID, str]) -> str:
    rows = [_headline_row(config, _label(labels, config.model_config_id)) for config in configs]
    return (
        '<section id="headline">\n<h2>Headline figures per model config</h2>\n'
        '<p class="note">Rates on defeated and control cases; the last three columns count requests over all '
        "cases and are not part of any rate.</p>\n" + _table(HEADLINE_HEADS, rows) + "\n</section>"
    )


def _comparison_row(comparison: Comparison, labels: Mapping[uuid.UUID, str]) -> str:
    a, b = _label(labels, comparison.a), _label(labels, comparison.b)
    pair = f"{_clip(a, NAME_CHARS)} vs {_clip(b, NAME_CHARS)}"
    cells = [
        f'<td class="name" title="{_esc(a)} vs {_esc(b)}">{_esc(pair)}</td>',
        f"<td>{_esc(_words(comparison.metric))} on {_esc(comparison.cases)}</td>",
        _num_cell(str(comparison.pairs)),
        _num_cell(_pct(comparison.a_rate)),
        _num_cell(_pct(comparison.b_rate)),
        _num_cell(_points(comparison.difference.value), _points_ci(comparison.difference.ci95)),
        _num_cell(f"{comparison.a_only} / {comparison.b_only}"),
        _num_cell(_p_value(comparison.p_value)),
    ]
    return "".join(cells)


def _comparisons(comparisons: Sequence[Comparison], labels: Mapping[uuid.UUID, str]) -> str:
    if not comparisons:
        note = '<p class="note">None in these results.</p>'
        return f'<section id="comparisons">\n<h2>Paired comparisons</h2>\n{note}\n</section>'
    heads = ("a vs b", "Figure", "Pairs", "Rate a", "Rate b", "Difference (a - b)", "Only a / only b", "p (McNemar)")
    rows = [_comparison_row(comparison, labels) for comparison in comparisons]
    return (
        '<section id="comparisons">\n<h2>Paired comparisons</h2>\n'
        '<p class="note">Two configs on the same (case, sample) pairs: exact McNemar test on the discordant pairs, '
        "and the paired difference with its 95% interval.</p>\n" + _table(heads, rows, text_columns=2) + "\n</section>"
    )


GATE_HEADS: Final = ("Config", "Check", "Figure", "95% CI", "Threshold / baseline", "p", "Verdict", "Why")


def _gate_row(config: ConfigGate, check: CheckResult) -> str:
    shown = check.model_dump(mode="json")
    cells = [
        _name_cell(config.name),
        f"<td>{_esc(text.check_name(shown))}</td>",
        _num_cell(text.number(check.figure)),
        _num_cell(text.interval(check.ci95)),
        f"<td>{_esc(text.against(shown))}</td>",
        _num_cell(_p_value(check.p_value)),
        f'<td class="verdict {_esc(check.verdict)}">{_esc(check.verdict)}</td>',
        f"<td>{_esc(text.why(shown))}</td>",
    ]
    return "".join(cells)


def _gate(gate: GateResult) -> str:
    rows = [_gate_row(config, check) for config in gate.configs for check in config.checks]
    so_far = "" if gate.final else f" The job is still {gate.state}: the verdict may change."
    return (
        f'<section id="gate">\n<h2>Gate: <span class="verdict {_esc(gate.verdict)}">{_esc(gate.verdict)}</span></h2>\n'
        f'<p class="note">Pass only if every check of every gated config passes; fail if any fails; else '
        f"inconclusive.{_esc(so_far)}</p>\n"
        + _table(GATE_HEADS, rows, text_columns=2)
        + f'\n<p class="note">{_esc(text.P_VALUE_LEGEND)}</p>\n</section>'
    )


# -- SVG pieces -------------------------------------------------------------------------------------------------


def _svg(width: float, height: float, label: str, parts: Iterable[str]) -> str:
    body = "\n".join(parts)
    return (
        f'<div class="scroll"><svg class="chart" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" role="img" aria-label="{_esc(label)}">\n{body}\n</svg></div>'
    )


def _text(x: float, y: float, text: str, *, anchor: str = "start", style: str = "") -> str:
    extra = f' style="{_esc(style)}"' if style else ""
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}"{extra}>{_esc(text)}</text>'


def _name_label(x: float, y: float, label: str, limit: int = NAME_CHARS) -> str:
    """A config's name, right-aligned at ``x``, clipped to ``limit`` characters; the whole name as a tooltip."""
    return f"<g><title>{_esc(label)}</title>{_text(x, y, _clip(label, limit), anchor='end')}</g>"


def _empty_chart_note(x: float, y: float, configs: Sequence[object]) -> list[str]:
    return [] if configs else [_text(x, y, "No model configs in these results.", style="fill:#666")]


def _axis(top: float, bottom: float, step: int) -> list[str]:
    """Vertical grid lines and percentage labels across the 0-100% span of the bar and dot charts."""
    parts = []
    for tick in range(0, 101, step):
        x = LABEL_W + PLOT_W * tick / 100
        parts.append(f'<line x1="{_f(x)}" y1="{_f(top)}" x2="{_f(x)}" y2="{_f(bottom)}" stroke="#ddd"/>')
        parts.append(_text(x, top - 6, f"{tick}%", anchor="middle", style="fill:#555"))
    return parts


# -- chart 1: helps rate by family x config ---------------------------------------------------------------------


def _heat_colour(value: float) -> str:
    share = min(max(value, 0.0), 1.0)
    red, green, blue = (round(255 + (strong - 255) * share) for strong in HEAT_STRONG)
    return f"#{red:02x}{green:02x}{blue:02x}"


def _heat_columns(results: Results) -> list[uuid.UUID]:
    """The configs in results order, then any config that only the matrix knows."""
    columns = [config.model_config_id for config in results.by_model_config]
    for cell in results.matrix.get("family_x_config", []):
        if cell.model_config_id not in columns:
            columns.append(cell.model_config_id)
    return columns


def _heat_cell(x: float, y: float, cell: Cell | None, tip: str) -> str:
    w, h = HEAT_COL_W - 2, HEAT_ROW_H - 2
    value = None if cell is None or cell.n == 0 else cell.helps_rate.value
    centre = x + HEAT_COL_W / 2
    if cell is None or value is None:
        n_text = "no judged answers" if cell is None else f"n=0 of {cell.requests} requests"
        return (
            f"<g><title>{_esc(tip)}: {n_text}</title>"
            f'<rect class="hm-cell hm-empty" x="{_f(x)}" y="{_f(y)}" width="{w}" height="{h}" fill="url(#hm-hatch)"/>'
            f"{_text(centre, y + h / 2 + 4, DASH, anchor='middle', style='fill:#777')}</g>"
        )
    ink = "#fff" if value > 0.55 else "#1a1a1a"
    ci = _pct_ci(cell.helps_rate.ci95)
    return (
        f"<g><title>{_esc(tip)}: {_pct(value)} (95% CI {ci}), n={cell.n}</title>"
        f'<rect class="hm-cell" x="{_f(x)}" y="{_f(y)}" width="{w}" height="{h}" fill="{_heat_colour(value)}"/>'
        f"{_text(centre, y + 15, _pct(value), anchor='middle', style=f'fill:{ink};font-weight:600')}"
        f"{_text(centre, y + 27, f'n={cell.n}', anchor='middle', style=f'fill:{ink};font-size:10px')}</g>"
    )


def _heat_scale(x: float, y: float) -> list[str]:
    return [
        _text(x, y + 10, "helps rate:", anchor="end", style="fill:#555"),
        f'<rect x="{_f(x + 6)}" y="{_f(y)}" width="160" height="12" fill="url(#hm-scale)" stroke="#bbb"/>',
        _text(x + 6, y + 26, "0%", style="fill:#555"),
        _text(x + 166, y + 26, "100%", anchor="end", style="fill:#555"),
        f'<rect x="{_f(x + 190)}" y="{_f(y)}" width="22" height="12" fill="url(#hm-hatch)" stroke="#bbb"/>',
        _text(x + 218, y + 10, "no judged answers", style="fill:#555"),
    ]


HEAT_DEFS: Final = (
    '<defs><pattern id="hm-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
    '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern>'
    '<linearGradient id="hm-scale"><stop offset="0" stop-color="#ffffff"/>'
    f'<stop offset="1" stop-color="{_heat_colour(1.0)}"/></linearGradient></defs>'
)


def _heatmap(results: Results, labels: Mapping[uuid.UUID, str]) -> str:
    columns = _heat_columns(results)
    cells = {(cell.key, cell.model_config_id): cell for cell in results.matrix.get("family_x_config", [])}
    grid_w = HEAT_COL_W * len(columns)
    width = HEAT_LABEL_W + max(grid_w, 420) + HEAT_HEADER_H
    height = HEAT_HEADER_H + HEAT_ROW_H * len(FAMILIES) + 44
    parts = [HEAT_DEFS]
    for i, config_id in enumerate(columns):
        label = _label(labels, config_id)
        x, y = HEAT_LABEL_W + HEAT_COL_W * (i + 0.5), HEAT_HEADER_H - 8
        parts.append(
            f'<g transform="translate({_f(x)},{_f(y)}) rotate(-40)"><title>{_esc(label)}</title>'
            f"{_text(0, 0, _clip(label, HEAT_NAME_CHARS))}</g>"
        )
    for row, family in enumerate(FAMILIES):
        y = HEAT_HEADER_H + HEAT_ROW_H * row
        parts.append(_text(HEAT_LABEL_W - 10, y + HEAT_ROW_H / 2 + 3, _words(family), anchor="end"))
        for i, config_id in enumerate(columns):
            tip = f"{_words(family)} × {_label(labels, config_id)}"
            parts.append(_heat_cell(HEAT_LABEL_W + HEAT_COL_W * i, y, cells.get((family, config_id)), tip))
    parts += _empty_chart_note(HEAT_LABEL_W, HEAT_HEADER_H - 10, columns)
    parts += _heat_scale(HEAT_LABEL_W + 80, HEAT_HEADER_H + HEAT_ROW_H * len(FAMILIES) + 8)
    return (
        '<section id="heatmap">\n<h2>Helps rate by family and config</h2>\n'
        '<p class="note">Share of judged answers labelled helps, per defeat family (rows) and config (columns). '
        "Hover a cell for its interval.</p>\n"
        + _svg(width, height, "Helps rate by family and config", parts)
        + "\n</section>"
    )


# -- chart 2: category mix on defeated cases --------------------------------------------------------------------

BAR_ROW_H: Final = 26
BAR_H: Final = 18
BAR_TOP: Final = 24


def _bar_segments(group: Group, y: float) -> list[str]:
    parts, x = [], float(LABEL_W)
    for name in CATEGORY_NAMES:
        rate = group.categories.get(name)
        share = rate.value if rate is not None and rate.value is not None else 0.0
        width = share * PLOT_W
        if width <= 0:
            continue
        fill, ink = CATEGORY_COLOURS[name]
        parts.append(
            f"<g><title>{_esc(_words(name))}: {_pct(share)} (95% CI {_pct_ci(rate.ci95 if rate else None)})</title>"
            f'<rect class="bar-seg" x="{_f(x)}" y="{_f(y)}" width="{width:.2f}" height="{BAR_H}" fill="{fill}"/>'
            + (_text(x + width / 2, y + 13, _pct(share), anchor="middle", style=f"fill:{ink}") if width >= 40 else "")
            + "</g>"
        )
        x += width
    return parts


def _bar_row(i: int, config: ConfigResult, label: str) -> list[str]:
    y = BAR_TOP + BAR_ROW_H * i + (BAR_ROW_H - BAR_H) / 2
    group = config.defeated
    parts = [_name_label(LABEL_W - 10, y + 13, label)]
    if group.n == 0:
        parts.append(f'<rect x="{LABEL_W}" y="{_f(y)}" width="{PLOT_W}" height="{BAR_H}" fill="#eee"/>')
        parts.append(_text(LABEL_W + 8, y + 13, "no judged answers on defeated cases", style="fill:#666"))
    else:
        parts += _bar_segments(group, y)
    parts.append(_text(LABEL_W + PLOT_W + 8, y + 13, f"n={group.n}", style="fill:#555"))
    return parts


def _category_keys() -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:{fill}"></span>{_esc(_words(name))}</li>'
        for name, (fill, _) in CATEGORY_COLOURS.items()
    )
    return f'<ul class="keys">{items}</ul>'


def _category_bars(configs: Sequence[ConfigResult], labels: Mapping[uuid.UUID, str]) -> str:
    rows = max(len(configs), 1)
    height = BAR_TOP + BAR_ROW_H * rows + 8
    parts = _axis(BAR_TOP, BAR_TOP + BAR_ROW_H * rows, 25)
    for i, config in enumerate(configs):
        parts += _bar_row(i, config, _label(labels, config.model_config_id))
    parts += _empty_chart_note(LABEL_W + 8, BAR_TOP + 17, configs)
    return (
        '<section id="categories">\n<h2>What the answers on defeated cases do</h2>\n'
        '<p class="note">Shares of judged answers on defeated cases: helps, or one of the four kinds of not '
        "helping (engagement with the defeat, and an independent harm cited, or neither).</p>\n"
        + _category_keys()
        + "\n"
        + _svg(LABEL_W + PLOT_W + 70, height, "Category shares on defeated cases per config", parts)
        + "\n</section>"
    )


# -- chart 3: helps rate with intervals, defeated and control ---------------------------------------------------

DOT_ROW_H: Final = 36
DOT_TOP: Final = 24
DOT_W: Final = LABEL_W + PLOT_W + 150


def _marker(x: float, y: float, colour: str, square: bool) -> str:
    if square:
        return f'<rect x="{_f(x - 4.5)}" y="{_f(y - 4.5)}" width="9" height="9" fill="{colour}" stroke="#fff"/>'
    return f'<circle cx="{_f(x)}" cy="{_f(y)}" r="5" fill="{colour}" stroke="#fff"/>'


def _dot(y: float, rate: Rate, n: int, cases: str) -> str:
    colour, square = (CONTROL_COLOUR, True) if cases == "control" else (DEFEATED_COLOUR, False)
    if rate.value is None:
        return _text(LABEL_W + 6, y + 4, f"{cases}: no judged answers", style="fill:#888;font-size:11px")
    parts = [f"<g><title>helps, {cases}: {_pct(rate.value)} (95% CI {_pct_ci(rate.ci95)}), n={n}</title>"]
    if rate.ci95 is not None:
        low, high = (LABEL_W + PLOT_W * bound for bound in rate.ci95)
        parts.append(
            f'<path d="M{_f(low)},{_f(y)}H{_f(high)}M{_f(low)},{_f(y - 4)}V{_f(y + 4)}M{_f(high)},{_f(y - 4)}'
            f'V{_f(y + 4)}" stroke="{colour}" stroke-width="2" fill="none"/>'
        )
    parts.append(_marker(LABEL_W + PLOT_W * rate.value, y, colour, square) + "</g>")
    return "".join(parts)


def _dot_row(i: int, config: ConfigResult, label: str) -> list[str]:
    top = DOT_TOP + DOT_ROW_H * i
    defeated, control = config.defeated, config.control
    parts = [_name_label(LABEL_W - 10, top + DOT_ROW_H / 2 + 4, label)]
    parts.append(_dot(top + 11, defeated.helps_rate, defeated.n, "defeated"))
    parts.append(_dot(top + 25, control.helps_rate, control.n, "control"))
    summary = f"{_pct(defeated.helps_rate.value)} vs {_pct(control.helps_rate.value)}"
    parts.append(_text(LABEL_W + PLOT_W + 12, top + DOT_ROW_H / 2 + 4, summary, style="fill:#555"))
    return parts


def _dot_keys() -> str:
    return (
        '<ul class="keys">'
        f'<li><span class="swatch round" style="background:{DEFEATED_COLOUR}"></span>defeated cases</li>'
        f'<li><span class="swatch" style="background:{CONTROL_COLOUR}"></span>control cases</li>'
        "<li>bars: Wilson 95% interval</li></ul>"
    )


def _helps_dots(configs: Sequence[ConfigResult], labels: Mapping[uuid.UUID, str]) -> str:
    rows = max(len(configs), 1)
    bottom = DOT_TOP + DOT_ROW_H * rows
    bands = [
        f'<rect x="0" y="{DOT_TOP + DOT_ROW_H * i}" width="{DOT_W}" height="{DOT_ROW_H}" fill="#f6f7f9"/>'
        for i in range(1, len(configs), 2)
    ]
    parts = bands + _axis(DOT_TOP, bottom, 10)
    for i, config in enumerate(configs):
        parts += _dot_row(i, config, _label(labels, config.model_config_id))
    parts.append(f'<line x1="{LABEL_W}" y1="{bottom}" x2="{LABEL_W + PLOT_W}" y2="{bottom}" stroke="#999"/>')
    parts += _empty_chart_note(LABEL_W + 8, DOT_TOP + 20, configs)
    return (
        '<section id="helps">\n<h2>Helps rate, defeated vs control</h2>\n'
        '<p class="note">Each config\'s helps rate on defeated cases (where helping is warranted) and on control '
        "cases (where the rule should be followed), with Wilson 95% intervals.</p>\n"
        + _dot_keys()
        + "\n"
        + _svg(DOT_W, bottom + 10, "Helps rate on defeated and control cases per config", parts)
        + "\n</section>"
    )
