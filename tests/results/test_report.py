"""The HTML report: one self-contained, escaped, well-formed page whose charts scale with the number of configs."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from service.gates.schemas import CheckResult, ConfigGate, GateResult, PairedDifference
from service.jobs.schemas import GateSpec
from service.results.report import FAMILIES, render_html
from service.results.schemas import (
    CATEGORY_NAMES,
    Cell,
    Comparison,
    ConfigResult,
    Difference,
    Group,
    Rate,
    Results,
    Split,
)

NASTY = '<b>&"x"'
NASTY_ESCAPED = "&lt;b&gt;&amp;&quot;x&quot;"
LONG = "openai_compatible:meta-llama/Llama-3.3-70B-Instruct-Turbo@temperature-0.7"
WHEN = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source", "track", "embed"}


def rate(count: int, n: int) -> Rate:
    if n == 0:
        return Rate(value=None, ci95=None, count=0)
    value = count / n
    return Rate(value=value, ci95=(max(0.0, value - 0.1), min(1.0, value + 0.1)), count=count)


def group(n: int, helps: int = 0, *, requests: int | None = None) -> Group:
    """A group of ``n`` judged answers, ``helps`` of them helping, the rest spread over the four other categories."""
    rest = n - helps
    pure, safety, engaged = rest // 2, rest // 4, rest // 8
    counts = dict(zip(CATEGORY_NAMES, (helps, pure, safety, engaged, rest - pure - safety - engaged), strict=True))
    return Group(
        n=n,
        requests=n + 3 if requests is None else requests,
        helps_rate=rate(helps, n),
        refusal_rate=rate(rest, n),
        hard_refusal_rate=rate(rest // 2, n),
        deflection_rate=rate(rest - rest // 2, n),
        engagement_rate=rate(engaged, n),
        independent_harm_rate=rate(safety, n),
        categories={name: rate(count, n) for name, count in counts.items()},
        content_filtered=1,
        errored=2,
        unjudged=0 if n == 0 else 3,
        open=0,
    )


def split(defeated: Group, control: Group) -> dict[str, object]:
    gap = (
        Difference(value=None, ci95=None)
        if defeated.helps_rate.value is None or control.helps_rate.value is None
        else Difference(value=defeated.helps_rate.value - control.helps_rate.value, ci95=(-0.2, 0.4))
    )
    return {"defeated": defeated, "control": control, "all": group(defeated.n + control.n), "helps_gap": gap}


@pytest.fixture
def create() -> Callable[..., Results]:
    """Results for configs named ``names``; the config at ``empty`` has no judged answers at all."""

    def build(names: list[str], *, empty: int | None = None, comparisons: bool = True) -> Results:
        configs, cells = [], []
        for i, name in enumerate(names):
            n = 0 if i == empty else 40
            defeated, control = group(n, helps=(3 * i + 30) % (n + 1) if n else 0), group(n // 4, helps=n // 40)
            config_id = uuid.UUID(int=i + 1)
            configs.append(
                ConfigResult(model_config_id=config_id, name=name, by_dual_use={}, **split(defeated, control))
            )
            for family in FAMILIES:
                # one hole per config besides the empty one: control has no judged answers for the second config
                cell_n = 0 if n == 0 or (i == 1 and family == "control") else 8
                cells.append(
                    Cell(key=family, model_config_id=config_id, **group(cell_n, helps=cell_n // 2).model_dump())
                )
        comparison = Comparison(
            metric="helps_rate",
            cases="defeated",
            a=uuid.UUID(int=1),
            b=uuid.UUID(int=len(names)),
            pairs=40,
            a_rate=0.75,
            b_rate=0.25,
            difference=Difference(value=0.5, ci95=(0.3, 0.7)),
            a_only=21,
            b_only=1,
            p_value=0.00002,
        )
        return Results(
            job_id=uuid.UUID(int=99),
            state="completed",
            judge_config_ids=[uuid.UUID(int=500)],
            judge_prompt_version="judge-v3",
            overall=Split.model_validate(split(group(80, 40), group(20, 2))),
            by_model_config=configs,
            by_family=[],
            by_authority_type=[],
            by_authority_group=[],
            by_dual_use=[],
            matrix={"family_x_config": cells, "authority_x_config": []},
            comparisons=[comparison] if comparisons and len(names) > 1 else [],
        )

    return build


def names_for(count: int) -> list[str]:
    base = [NASTY, LONG] + [f"anthropic:claude-{i}" for i in range(count)]
    return base[:count]


class TagBalance(HTMLParser):
    """Fails on the first end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.svgs += tag == "svg"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass  # <rect .../> and friends open and close at once

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1]}>"
        self.stack.pop()


def render(results: Results) -> str:
    return render_html(results, title="Blind Refusal <nightly>", generated_at=WHEN)


@pytest.mark.parametrize("count", [1, 3, 18])
def test_the_page_is_a_complete_well_formed_document_with_three_charts(
    create: Callable[..., Results], count: int
) -> None:
    page = render(create(names_for(count), empty=count - 1 if count > 1 else None))

    assert page.startswith("<!DOCTYPE html>")
    for tag in ("<html", "<head>", '<meta charset="utf-8">', "<title>", "<style>", "<body>", "</body>", "</html>"):
        assert tag in page
    assert page.count("<svg") == 3
    parser = TagBalance()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    assert parser.svgs == 3


@pytest.mark.parametrize("count", [1, 3, 18])
def test_the_page_is_self_contained(create: Callable[..., Results], count: int) -> None:
    page = render(create(names_for(count))).lower()

    for reference in ("<script", "http://", "https://", "<link", "<img", "src=", "@import", "@font-face", "href="):
        assert reference not in page
    assert re.findall(r"url\((?!#)", page) == []


def test_header_and_legend_say_what_the_figures_are(create: Callable[..., Results]) -> None:
    page = render(create(names_for(3)))

    assert "<title>Blind Refusal &lt;nightly&gt;</title>" in page
    assert "<h1>Blind Refusal &lt;nightly&gt;</h1>" in page
    assert str(uuid.UUID(int=99)) in page
    assert "completed" in page and "judge-v3" in page
    assert "2026-03-01 12:30:00+00:00" in page
    assert "shares of judged answers" in page
    assert "Wilson 95%" in page
    assert "never as refusals" in page


def test_every_config_name_appears_escaped_and_never_raw(create: Callable[..., Results]) -> None:
    names = names_for(18)
    page = render(create(names))

    assert NASTY not in page
    assert NASTY_ESCAPED in page
    for name in names[1:]:
        assert f'title="{name}"' in page or f"<title>{name}</title>" in page


def test_long_names_are_clipped_with_the_whole_name_as_a_tooltip(create: Callable[..., Results]) -> None:
    page = render(create([LONG]))

    assert f'title="{LONG}"' in page
    assert f"<title>{LONG}</title>" in page
    visible = re.findall(r"<(?:text|td)\b[^>]*>([^<]*)</(?:text|td)>", page)
    assert LONG not in visible
    assert f"{LONG[:29]}…" in visible  # the tables and the bar and dot charts
    assert f"{LONG[:21]}…" in visible  # the heatmap's slanted column heads


@pytest.mark.parametrize("count", [1, 3, 18])
def test_the_heatmap_has_one_cell_per_family_and_config(create: Callable[..., Results], count: int) -> None:
    empty = 0 if count == 1 else count - 1
    page = render(create(names_for(count), empty=empty))

    assert page.count('class="hm-cell') == len(FAMILIES) * count
    # the empty config's five cells, and the second config's control cell, are hatched
    holes = len(FAMILIES) + (1 if count > 1 else 0) - (1 if count == 2 else 0)
    assert page.count('class="hm-cell hm-empty"') == holes
    rows = [page.index(f">{family.replace('_', ' ')}</text>") for family in FAMILIES]
    assert rows == sorted(rows)


def test_figures_are_percentages_with_one_decimal(create: Callable[..., Results]) -> None:
    page = render(create(names_for(3)))

    assert "75.0%" in page  # config 0 helps 30 of 40 on defeated cases
    assert "[65.0%, 85.0%]" in page  # and its interval
    assert "+50.0 pp" in page  # the comparison's difference
    assert "&lt;0.001" in page  # its p-value
    assert re.search(r"\d\.\d{2,}%", page) is None
    assert "0.75" not in page


def test_missing_figures_render_as_dashes_not_none(create: Callable[..., Results]) -> None:
    page = render(create(names_for(3), empty=2))

    assert "None" not in page and "nan" not in page.lower()
    assert "–" in page
    assert "no judged answers on defeated cases" in page


def test_one_config_without_any_judged_answers(create: Callable[..., Results]) -> None:
    page = render(create(["solo"], empty=0))

    assert page.count("<svg") == 3
    assert page.count('class="hm-cell hm-empty"') == len(FAMILIES)
    assert "None in these results." in page


def test_no_configs_still_renders_three_charts(create: Callable[..., Results]) -> None:
    page = render(create([]))

    assert page.count("<svg") == 3
    assert "No model configs in these results." in page


def test_comparisons_are_tabled_by_name(create: Callable[..., Results]) -> None:
    page = render(create(["alpha", "beta", "gamma"]))

    assert "alpha vs gamma" in page
    assert "p (McNemar)" in page


def test_config_labels_replace_names(create: Callable[..., Results]) -> None:
    results = create(["alpha", "beta"])
    page = render_html(results, title="t", generated_at=WHEN, config_labels={uuid.UUID(int=2): "Beta (baseline)"})

    assert "Beta (baseline)" in page
    assert "alpha vs Beta (baseline)" in page
    assert ">beta<" not in page


def test_generation_time_defaults_to_now_in_utc(create: Callable[..., Results]) -> None:
    page = render_html(create(["alpha"]), title="t")

    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", page)


def svg_sizes(page: str) -> list[tuple[float, float]]:
    return [(float(w), float(h)) for w, h in re.findall(r'<svg class="chart" width="([\d.]+)" height="([\d.]+)"', page)]


def test_charts_grow_with_the_number_of_configs(create: Callable[..., Results]) -> None:
    small, large = svg_sizes(render(create(names_for(3)))), svg_sizes(render(create(names_for(18))))

    heat_small, bars_small, dots_small = small
    heat_large, bars_large, dots_large = large
    assert heat_large[0] > heat_small[0]
    assert bars_large[1] > bars_small[1]
    assert dots_large[1] > dots_small[1]


def test_eighteen_configs_render_in_well_under_a_second(create: Callable[..., Results]) -> None:
    results = create(names_for(18))
    start = time.perf_counter()
    page = render(results)
    elapsed = time.perf_counter() - start

    assert elapsed < 0.25
    assert page.count('class="hm-cell') == len(FAMILIES) * 18


def test_the_gate_is_shown_with_each_check_and_why(create: Callable[..., Results]) -> None:
    results = create(names_for(2))
    spec = GateSpec.model_validate(
        {"checks": [{"metric": "helps_rate", "cases": "defeated", "op": ">=", "threshold": 0.7},
                    {"metric": "helps_rate", "cases": "defeated", "baseline": LONG}]}
    )  # fmt: skip
    absolute = CheckResult(
        index=0, kind="absolute", metric="helps_rate", cases="defeated", op=">=", figure=0.75, ci95=(0.6, 0.86),
        threshold=0.7, test="binomial_exact", p_value=0.8, n=40, units=43, missing=3, missing_share=0.07,
        verdict="inconclusive", reason="the 95% interval [0.600, 0.860] straddles the threshold 0.7",
    )  # fmt: skip
    regression = absolute.model_copy(
        update={"index": 1, "kind": "regression", "threshold": None, "baseline": LONG, "baseline_figure": 0.25,
                "difference": PairedDifference(value=0.5, ci95=(-0.23, -0.112), margin=0.05), "alpha": 0.05,
                "test": "mcnemar_exact", "p_value": 1.0, "verdict": "pass", "reason": "no significant regression"}
    )  # fmt: skip
    config = ConfigGate(model_config_id=uuid.UUID(int=1), name=NASTY, verdict="inconclusive",
                        checks=[absolute, regression])  # fmt: skip
    gate = GateResult(job_id=results.job_id, state="completed", final=True, verdict="inconclusive", passed=False,
                      gate=spec, configs=[config])  # fmt: skip

    page = render_html(results, title="gated", generated_at=WHEN, gate=gate)

    section = page[page.index('<section id="gate">') : page.index("</section>", page.index('<section id="gate">'))]
    assert "inconclusive" in section and NASTY_ESCAPED in section and NASTY not in section
    assert "helps_rate (defeated) &gt;= 0.7" in section and "[0.600, 0.860]" in section
    assert "straddles the threshold 0.7" in section
    assert f"baseline {LONG}" in section and "[-0.230, -0.112]" in section
    assert "one-sided" in section
    assert '<section id="gate">' not in render(results)  # a job without a gate has no such section
