"""HTML rendering of the report. Every value that comes from a run directory goes through :func:`e`."""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from misalign import __version__
from misalign.bench.metrics import HEADLINE, METRICS
from misalign.bench.record import Block, Intervals
from misalign.records import SEMANTIC_TYPES
from misalign.redact import redact_command, scrub
from misalign.report import analysis, plots
from misalign.report.data import SIDES, Run, fig, fig_pair
from misalign.taxonomy import DIMENSION_TITLES, DIMENSIONS, Taxonomy

MAX_TEXT = 2000
"""Characters of a prompt, response or raw answer shown per example."""
CSS = (Path(__file__).parent / "report.css").read_text(encoding="utf-8")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
"""The page allows no scripts, fonts or network requests at all (defence in depth on top of escaping)."""
SECTIONS = (("leaderboard", "Leaderboard"), ("scatter", "Coverage vs 1 − FFR"),
            ("dimensions", "Alignment Score per dimension"), ("tradeoffs", "Trade-offs between dimensions"),
            ("semantic", "Alignment Score per semantic type"),
            ("domains", "Alignment Score per domain"), ("worst", "Worst domains and examples"),
            ("comparisons", "Paired comparisons"), ("reliability", "Judge reliability"),
            ("provenance", "Runs and provenance"))
"""Every section in page order; ``semantic`` only when a run has typed items (see :func:`sections_of`)."""


def e(value: Any) -> str:
    """HTML-escape any value for text and (quoted) attributes."""
    return escape("" if value is None else str(value), quote=True)


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals; "—" when missing."""
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}"


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; "—" when missing."""
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value for a table cell."""
    if p is None or not np.isfinite(p):
        return "—"
    return "&lt; 0.001" if p < 0.001 else f"{p:.3f}"


def _std(block: Block | None, name: str) -> float | None:
    return fig(block.std, name) if block is not None else None  # type: ignore[attr-defined]


def stat_cell(block: Block | None, ci: Intervals | None, name: str, cls: str = "") -> str:
    """A table cell "mean ± std" with the 95% CI beneath; a hatched empty cell when there is no value."""
    cls = f" {cls}" if cls else ""
    mean = fig(block, name)
    if mean is None:
        return f'<td class="missing{cls}" title="no value">—</td>'
    std = _std(block, name)
    text = pct(mean) + (f" ± {pct(std)}" if std is not None else "")
    interval = fig_pair(ci, name)
    ci_html = f'<span class="ci">[{pct(interval[0])}, {pct(interval[1])}]</span>' if interval else ""
    return f'<td class="num{cls}">{text}{ci_html}</td>'


def created(run: Run) -> str:
    """When the run was made, as "YYYY-MM-DD HH:MM UTC" (escaped)."""
    raw = run.manifest.created
    if not raw:
        return "—"
    try:
        t = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return e(raw)
    return e(t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.utcoffset() is not None and not t.utcoffset() else ""))


def dataset_cell(run: Run, rows: int = 1) -> str:
    """Short dataset hash and split, the full hash and source in the tooltip, spanning ``rows`` rows."""
    d = run.dataset
    title = f"sha256 {d.sha256}; source {d.source}; {d.items} items"
    span = f' rowspan="{rows}"' if rows > 1 else ""
    return (f'<td{span} title="{e(title)}"><code>{e(d.sha256[:12]) or "—"}</code>'
            f'<span class="ci">{e(d.split or "all")}</span></td>')


def model_cell(run: Run, rows: int = 1) -> str:
    """The model's display name, its directory in the tooltip, spanning ``rows`` rows."""
    span = f' rowspan="{rows}"' if rows > 1 else ""
    return f'<td class="model"{span} title="{e(run.path.name)}">{e(run.name)}</td>'


# -- sections ------------------------------------------------------------------------------------------

SCOPES = (("Overall", "overall", None), *((DIMENSION_TITLES[d], "by_dimension", d) for d in DIMENSIONS),
          ("All three", "all_three", None))
"""The leaderboard's rows per run: (label, scope, dimension) as :meth:`Run.block` takes them."""


def _metric_cells(run: Run, scope: str, dim: str | None) -> str:
    """Every metric of :data:`METRICS` for one scope of a run; the ranking metric marked."""
    block, ci = run.block(scope, dim), run.ci(scope, dim)
    cells = []
    for i, m in enumerate(METRICS):
        cls = [c for c, on in (("sep", i == 0), ("headline", m.name == HEADLINE)) if on]
        cells.append(stat_cell(block, ci, m.name, cls=" ".join(cls)))
    return "".join(cells)


def auroc_missing_reason(r: Run) -> str:
    """Why a run has no AUROC, from what its endpoint returned."""
    served = r.manifest.served
    if served.get("answers") and not served.get("with_logprobs") and not served.get("with_confidence"):
        return "no scores: the endpoint returned no log-probabilities and the judge stated no confidence"
    return "no scores, or only one gold label in this scope"


def _auroc_cell(r: Run, scope: str, dim: str | None) -> str:
    """The threshold-free AUROC of a scope (from scores), or an empty cell saying why there is none."""
    value = getattr(r.block(scope, dim), "auroc", None)
    if value is None:
        return f'<td class="missing sep" title="{e(auroc_missing_reason(r))}">—</td>'
    return f'<td class="num sep">{num(value)}</td>'


def _trade_off_cell(r: Run, rows: int) -> str:
    """The run's trade-offs between dimensions (percentage points, 95% CI beneath), spanning ``rows`` rows."""
    t = r.metrics.trade_offs.overall if r.metrics.trade_offs is not None else None
    if t is None:
        return f'<td class="missing sep" rowspan="{rows}" title="not in this run directory (an older misalign)">—</td>'
    lines = []
    for label, value, interval in (("spread", t.spread, t.spread_ci95), ("joint drop", t.joint_drop,
                                                                         t.joint_drop_ci95)):
        lo, hi = [*interval, None, None][:2]
        ci_html = (f'<span class="ci">[{pct(lo)}, {pct(hi)}]</span>' if lo is not None and hi is not None else "")
        lines.append(f'<span class="muted">{label}</span> {pct(value)}{ci_html}')
    return f'<td class="num sep" rowspan="{rows}">{"<br>".join(lines)}</td>'


def _leaderboard_rows(r: Run) -> str:
    """One row group per run: a row per scope (overall, each dimension, all three); the run's own cells (rank,
    model, answer counts, dataset, date) span the group."""
    n = len(SCOPES)
    counts = r.metrics.counts
    rows = []
    for k, (label, scope, dim) in enumerate(SCOPES):
        first = (f'<td class="num" rowspan="{n}">{r.rank}</td>{model_cell(r, n)}') if k == 0 else ""
        last = (f'{_trade_off_cell(r, n)}<td class="num sep" rowspan="{n}">{e(counts.unparseable)}</td>'
                f'<td class="num" rowspan="{n}">{e(counts.failed)}</td>{dataset_cell(r, n)}'
                f'<td class="num" rowspan="{n}">{created(r)}</td>') if k == 0 else ""
        rows.append(f'<tr class="scope-{e(scope)}">{first}<th scope="row">{e(label)}</th>'
                    f'{_metric_cells(r, scope, dim)}{_auroc_cell(r, scope, dim)}{last}</tr>')
    return f'<tbody>{"".join(rows)}</tbody>'


def leaderboard(runs: list[Run]) -> str:
    """One row group per run, ranked: every metric overall, per dimension and on items carrying all three; answer
    counts, dataset and date. Columns: the metrics of :data:`METRICS`, so the table stays narrow as scopes grow."""
    head = "".join(f'<th class="num{" sep" if i == 0 else ""}" scope="col" title="{e(m.doc)}">{e(m.short)}</th>'
                   for i, m in enumerate(METRICS))
    return (
        '<div class="table-wrap"><table class="leaderboard">'
        '<caption class="muted">Percent; mean ± std over runs, 95% bootstrap CI (items resampled) beneath. One row '
        'group per run directory, sorted by overall Alignment Score (bold): all responses, the items of each '
        'dimension, and the items carrying a domain of all three. Trade-offs, in percentage points: spread = best '
        'minus worst per-dimension AS, joint drop = mean per-dimension AS minus AS on the all-three items (our '
        'definitions; the paper does not publish its own).</caption>'
        '<thead><tr><th rowspan="2" class="num" scope="col">#</th><th rowspan="2" scope="col">Model</th>'
        '<th rowspan="2" scope="col">Scope</th>'
        f'<th class="group" colspan="{len(METRICS)}" scope="colgroup">Metrics (%)</th>'
        '<th rowspan="2" class="num sep" scope="col" title="Threshold-free: P(score of a misaligned response > score '
        'of an aligned one), from log-probabilities or stated confidence">AUROC</th>'
        '<th rowspan="2" class="num sep" scope="col" title="spread: best minus worst per-dimension AS; joint drop: '
        'mean per-dimension AS minus AS on items carrying all three (our definitions; 95% bootstrap CI beneath)">'
        'Trade-offs (pp)</th>'
        '<th class="group" colspan="2" scope="colgroup">Answers</th>'
        '<th rowspan="2" scope="col">Dataset</th><th rowspan="2" scope="col">Date</th></tr>'
        f'<tr>{head}<th class="num sep" scope="col">Unparseable</th><th class="num" scope="col">Failed</th></tr>'
        f'</thead>{"".join(_leaderboard_rows(r) for r in runs)}</table></div>')


def plot_label(r: Run) -> str:
    """A run's label in plots: its rank and name."""
    return f"{r.rank}. {r.name}"


def scatter_section(runs: list[Run]) -> str:
    """Coverage vs 1 − FFR with iso-AS curves."""
    points = [plots.Point(plot_label(r), fig(r.block("overall"), "coverage"),
                          fig(r.block("overall"), "false_failure_rate"), fig_pair(r.ci("overall"), "coverage"),
                          fig_pair(r.ci("overall"), "false_failure_rate")) for r in runs]
    return figure(plots.scatter(points),
                  "Each model's overall Coverage (share of misaligned responses it flags) against 1 − FFR (share of "
                  "aligned responses it leaves alone), with 95% CI bars. Dashed curves join points of equal "
                  "Alignment Score, their harmonic mean; up and right is better.")


def dimension_section(runs: list[Run]) -> str:
    """Grouped bars of AS per dimension and all three."""
    values: dict[str, list[float | None]] = {}
    cis: dict[str, list[tuple[float, float] | None]] = {}
    for d in DIMENSIONS:
        values[d] = [fig(r.block("by_dimension", d), "alignment_score") for r in runs]
        cis[d] = [fig_pair(r.ci("by_dimension", d), "alignment_score") for r in runs]
    values["all_three"] = [fig(r.block("all_three"), "alignment_score") for r in runs]
    cis["all_three"] = [fig_pair(r.ci("all_three"), "alignment_score") for r in runs]
    return figure(plots.dimension_bars([plot_label(r) for r in runs], values, cis),
                  "Alignment Score on the responses of items carrying a domain of each dimension, and on items "
                  "carrying all three (hatched). Whiskers: 95% bootstrap CI; n/a: no such items.")


def tradeoff_section(runs: list[Run]) -> str:
    """Spread of per-dimension AS per model."""
    per_dim = [{d: fig(r.block("by_dimension", d), "alignment_score") for d in DIMENSIONS} for r in runs]
    overall = [fig(r.block("overall"), "alignment_score") for r in runs]
    return figure(plots.tradeoffs([plot_label(r) for r in runs], per_dim, overall),
                  "For each model, a dot per dimension's Alignment Score and a bar spanning their range: a long bar "
                  "means the model does well on one dimension at the expense of another. The black tick is the "
                  "overall score.")


def semantic_section(runs: list[Run]) -> str:
    """Alignment Score per semantic type (object, attribute, relation) per model, with n and 95% CIs."""
    head = "".join(f'<th class="num{" sep" if i == 0 else ""}" scope="col">{e(t.capitalize())}</th>'
                   for i, t in enumerate(SEMANTIC_TYPES))
    body = []
    for r in runs:
        cells = []
        for i, t in enumerate(SEMANTIC_TYPES):
            block = r.block("by_semantic_type", t)
            cell = stat_cell(block, r.ci("by_semantic_type", t), HEADLINE, cls="sep" if i == 0 else "")
            n = block.n if block is not None else 0
            cells.append(cell.replace("<td ", f'<td title="n = {n} responses (run 0)" ', 1)
                         if fig(block, HEADLINE) is not None else cell)
        body.append(f'<tr><td class="num">{r.rank}</td>{model_cell(r)}{"".join(cells)}</tr>')
    return ('<p>Alignment Score (%) on the responses of items of each MisAlign-Profile semantic type: where the '
            'misalignment lies, in what is produced (object), in a property attributed to someone or something '
            '(attribute), or in how people, groups or acts relate (relation). Mean ± std over runs, 95% bootstrap CI '
            'beneath; items without a type are in no column; —: no items of that type.</p>'
            '<div class="table-wrap"><table class="semantic"><thead><tr><th class="num" scope="col">#</th>'
            f'<th scope="col">Model</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def sections_of(runs: list[Run]) -> tuple[tuple[str, str], ...]:
    """The sections of this report: all of :data:`SECTIONS`, the semantic-type panel only when a run has typed
    items."""
    typed = any(r.typed for r in runs)
    return tuple(s for s in SECTIONS if s[0] != "semantic" or typed)


def _domain_cell(value: float, n: int) -> str:
    """A per-domain table cell: AS in %, n beneath (drawn by the style sheet from ``data-n``); pale when n is below
    :data:`analysis.MIN_DOMAIN_N`."""
    cls = "num low-n" if n < analysis.MIN_DOMAIN_N else "num"
    return f'<td class="{cls}" data-n="{n}" title="n = {n}">{pct(value)}</td>'


def _domain_table(runs: list[Run], rows: list[tuple[str, str]], matrix: np.ndarray, n: np.ndarray) -> str:
    """The heatmap's numbers as a collapsible table, grouped by dimension."""
    head = "".join(f'<th class="num" scope="col" title="{e(r.name)}">{r.rank}</th>' for r in runs)
    body, last = [], None
    for i, (dim, name) in enumerate(rows):
        if dim != last:
            title = e(DIMENSION_TITLES.get(dim, dim))
            body.append(f'<tr><th colspan="{len(runs) + 1}" scope="rowgroup">{title}</th></tr>')
            last = dim
        cells = ['<td class="missing" title="no data">—</td>' if np.isnan(matrix[i, j]) else
                 _domain_cell(float(matrix[i, j]), int(n[i, j])) for j in range(len(runs))]
        body.append(f'<tr><th scope="row">{e(name)}</th>{"".join(cells)}</tr>')
    legend = ", ".join(f"{r.rank} = {e(r.name)}" for r in runs)
    return (f'<details><summary>Per-domain table (AS in %, n beneath; pale: n &lt; {analysis.MIN_DOMAIN_N})'
            f'</summary><p class="muted">Columns: {legend}. n: judged responses of run 0.</p>'
            f'<div class="table-wrap"><table class="domains"><thead><tr><th scope="col">Domain</th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div></details>')


def domains_section(runs: list[Run], taxonomy: Taxonomy) -> str:
    """Heatmap of AS per domain and model (low-n cells pale, n printed), the same numbers as a collapsible table."""
    rows, matrix, blocks = analysis.domain_matrix(runs, taxonomy)
    n = analysis.domain_n(rows, blocks)
    n_missing = int(np.isnan(matrix).sum())
    n_low = int((~np.isnan(matrix) & (n < analysis.MIN_DOMAIN_N)).sum())
    svg = plots.heatmap(rows, [plot_label(r) for r in runs], matrix, n, analysis.MIN_DOMAIN_N)
    caption = (f"Alignment Score for each of the {len(rows)} domains (taxonomy order, grouped by dimension) and each "
               f"model. Pale cells with a number rest on fewer than {analysis.MIN_DOMAIN_N} judged responses (run 0; "
               f"the number is n): too few to tell much, read them with care ({n_low} of {matrix.size}). Hatched "
               f"grey cells have no data ({n_missing} of {matrix.size}): they are empty, not zero.")
    return figure(svg, caption) + _domain_table(runs, rows, matrix, n)


def _text_block(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or value == "":
        return '<span class="muted">(not recorded)</span>'
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    more = ""
    if len(text) > MAX_TEXT:
        more = f'<span class="muted">… {len(text) - MAX_TEXT} more characters</span>'
        text = text[:MAX_TEXT]
    return f"<pre>{e(text)}</pre>{more}"


def _label(value: Any) -> str:
    v = str(value) if value is not None else "—"
    cls = f' class="label-{v}"' if v in SIDES or v == "unparseable" else ""
    return f"<span{cls}>{e(v)}</span>"


def example_html(row: dict[str, Any]) -> str:
    """One wrong answer: item, gold label, verdict, prompt, response and raw answer, all escaped."""
    return (
        '<div class="example"><dl>'
        f'<dt>Item</dt><dd><code>{e(row.get("item_id"))}</code> ({e(row.get("side"))} response)</dd>'
        f'<dt>Gold label</dt><dd>{_label(row.get("label"))}</dd>'
        f'<dt>Verdict</dt><dd>{_label(row.get("verdict"))}</dd>'
        f'<dt>Prompt</dt><dd>{_text_block(row, "prompt")}</dd>'
        f'<dt>Response</dt><dd>{_text_block(row, "response")}</dd>'
        f'<dt>Raw answer</dt><dd>{_text_block(row, "raw")}</dd>'
        + (f'<dt>Error</dt><dd>{_text_block(row, "error")}</dd>' if row.get("error") else "")
        + "</dl></div>")


def _worst_table(worst: list[analysis.WorstDomain]) -> str:
    """A model's worst domains: dimension, domain, every metric and n."""
    head = "".join(f'<th class="num" scope="col">{m.short}</th>' for m in METRICS)
    rows = "".join(
        f'<tr><td>{e(DIMENSION_TITLES.get(w.dimension, w.dimension))}</td><td>{e(w.name)}</td>'
        + "".join(f'<td class="num">{pct(fig(w.block, m.name))}</td>' for m in METRICS)
        + f'<td class="num">{w.block.n}</td></tr>' for w in worst)
    return ('<div class="table-wrap"><table><thead><tr><th scope="col">Dimension</th><th scope="col">Domain</th>'
            f'{head}<th class="num" scope="col">n</th></tr></thead><tbody>{rows}</tbody></table></div>')


def worst_section(runs: list[Run]) -> str:
    """Each model's lowest-AS domains with examples of its mistakes there."""
    parts = [f'<p>For each model, its three lowest-scoring domains among those with at least '
             f'{analysis.MIN_DOMAIN_N} judged responses, with up to five responses of run 0 it judged wrongly '
             'there (gold label ≠ verdict). Texts are shown verbatim (escaped, never interpreted).</p>']
    for r in runs:
        parts.append(f'<h3 id="worst-{r.rank}">{r.rank}. {e(r.name)}</h3>')
        worst = analysis.worst_domains(r)
        if not worst:
            worst = analysis.worst_domains(r, min_n=analysis.MIN_DOMAIN_N_SMALL)
            parts.append(f'<p class="muted">No domain has {analysis.MIN_DOMAIN_N} or more judged responses'
                         + (f"; these have at least {analysis.MIN_DOMAIN_N_SMALL} (small samples: read with care)."
                            if worst else ".") + "</p>")
            if not worst:
                continue
        parts.append(_worst_table(worst))
        if r.results is None:
            parts.append(f'<p class="muted">No examples: {e(r.results_error or "results unavailable")}.</p>')
            continue
        for w in worst:
            if not w.examples:
                parts.append(f'<p class="muted">{e(w.name)}: no wrong answer in run 0 records this domain.</p>')
                continue
            parts.append(f'<details><summary>{e(w.name)}: {len(w.examples)} of {w.n_wrong} wrong answers in run 0'
                         f'</summary>{"".join(example_html(x) for x in w.examples)}</details>')
    return "".join(parts)


def _dataset_title(g: list[Run]) -> str:
    d = g[0].dataset
    return (f'Dataset <code>{e(d.sha256[:12])}</code> ({e(d.split or "all")}): '
            f'{plural(len(g), "run directory", "run directories")}')


def _no_pairs_reason(runs: list[Run]) -> str:
    with_results = sum(r.results is not None for r in runs)
    keys = {r.dataset_key for r in runs if r.results is not None and r.dataset_key is not None}
    return (f"this report has {plural(len(runs), 'run directory', 'run directories')} ({with_results} with "
            f"results.jsonl) on {plural(len(keys), 'dataset')}; these need at least two run directories with results "
            "on the same dataset (same sha256 and split).")


def comparisons_section(runs: list[Run], groups: list[analysis.Group]) -> str:
    """Paired bootstrap of ΔAS and McNemar for each pair of runs on one dataset, or why there are none."""
    if not groups:
        return f'<p class="note">No paired comparisons: {_no_pairs_reason(runs)}</p>'
    parts = ['<p>Every pair of runs on the same items. <b>ΔAS</b> is AS(A) − AS(B) in percentage points with a paired '
             'bootstrap (items resampled together for both models, 2,000 resamples) 95% CI and two-sided p. '
             "<b>McNemar</b> compares the two judges' run-0 verdicts response by response (matched by item and side): "
             'b = A right and B wrong, c = A wrong and B right. p-values are not adjusted for multiple comparisons; '
             'bold: p &lt; 0.05.</p>']
    for g in groups:
        rows = []
        for c in analysis.compare(g):
            bp, mp = c.bootstrap["p_value"], c.mcnemar["p_value"]
            lo, hi = c.bootstrap["ci95"]
            rows.append(
                f'<tr><td>{c.a.rank}. {e(c.a.name)}</td><td>{c.b.rank}. {e(c.b.name)}</td>'
                f'<td class="num{" sig" if bp < 0.05 else ""}">{100 * c.bootstrap["difference"]:+.1f}</td>'
                f'<td class="num">[{100 * lo:+.1f}, {100 * hi:+.1f}]</td>'
                f'<td class="num{" sig" if bp < 0.05 else ""}">{fmt_p(bp)}</td>'
                f'<td class="num sep">{c.mcnemar["b"]}</td><td class="num">{c.mcnemar["c"]}</td>'
                f'<td class="num">{c.mcnemar["statistic"]:.2f}</td>'
                f'<td class="num{" sig" if mp < 0.05 else ""}">{fmt_p(mp)}</td><td class="num">{c.n_matched}</td></tr>')
        parts.append(
            f'<h3>{_dataset_title(g.runs)}</h3><div class="table-wrap"><table class="comparisons"><thead><tr>'
            '<th rowspan="2" scope="col">A</th><th rowspan="2" scope="col">B</th>'
            '<th class="group" colspan="3" scope="colgroup">Paired bootstrap</th>'
            '<th class="group" colspan="5" scope="colgroup">McNemar (run 0)</th></tr><tr>'
            '<th class="num" scope="col">ΔAS</th><th class="num" scope="col">95% CI</th>'
            '<th class="num" scope="col">p</th><th class="num sep" scope="col">b</th><th class="num" scope="col">c</th>'
            '<th class="num" scope="col">statistic</th><th class="num" scope="col">p</th>'
            '<th class="num" scope="col">responses</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
    return "".join(parts)


def reliability_section(runs: list[Run], groups: list[analysis.Group]) -> str:
    """Agreement between judges on one dataset (kappas, alpha, ICC), or why there is none."""
    if not groups:
        return f'<p class="note">No judge reliability: {_no_pairs_reason(runs)}</p>'
    parts = ["<p>How far the judges agree on the same responses, treating each run directory's run-0 flags "
             "(misaligned or not) as one rater. Cohen's kappa per pair; Fleiss' kappa and ICC(2,1) (two-way random, "
             "absolute agreement, single rater, on the 0/1 flags) over responses every judge rated; Krippendorff's "
             "alpha (nominal) over all responses, missing ratings allowed. 1 = perfect agreement, 0 = chance.</p>"]
    for g in groups:
        rel = analysis.reliability(g)
        parts.append(
            f'<h3>{_dataset_title(g.runs)}</h3><div class="table-wrap"><table class="reliability"><thead><tr>'
            '<th scope="col">Statistic</th><th class="num" scope="col">Value</th><th class="num" scope="col">Responses'
            '</th></tr></thead><tbody>'
            f'<tr><td>Fleiss\' kappa</td><td class="num">{num(rel.fleiss)}</td>'
            f'<td class="num">{rel.n_complete}</td></tr>'
            f'<tr><td>Krippendorff\'s alpha (nominal)</td><td class="num">{num(rel.alpha)}</td>'
            f'<td class="num">{rel.n_responses}</td></tr>'
            f'<tr><td>ICC(2,1)</td><td class="num">{num(rel.icc)}</td><td class="num">{rel.n_complete}</td></tr>'
            '</tbody></table></div>')
        head = "".join(f'<th class="num" scope="col" title="{e(r.name)}">{r.rank}</th>' for r in rel.runs)
        body = []
        for i, r in enumerate(rel.runs):
            cells = "".join(
                '<td class="num muted">—</td>' if i == j else
                f'<td class="num" title="{int(rel.n_pair[i, j])} responses">{num(rel.cohen[i, j])}</td>'
                for j in range(len(rel.runs)))
            body.append(f'<tr><th scope="row">{r.rank}. {e(r.name)}</th>{cells}</tr>')
        parts.append('<div class="table-wrap"><table class="cohen"><caption class="muted">Cohen\'s kappa per pair'
                     f'</caption><thead><tr><th scope="col">Judge</th>{head}</tr></thead>'
                     f'<tbody>{"".join(body)}</tbody></table></div>')
    return "".join(parts)


# -- provenance ----------------------------------------------------------------------------------------

def provenance_section(runs: list[Run]) -> str:
    """Version, template, dataset, seeds, command and (scrubbed) settings of every run."""
    rows = []
    for r in runs:
        m, d = r.manifest, r.dataset
        settings = json.dumps(scrub({**m.config, **({"endpoint": m.endpoint} if m.endpoint else {})}), indent=1,
                              ensure_ascii=False, sort_keys=True, default=str)
        rows.append(
            f'<tr><td class="num">{r.rank}</td><td>{e(r.name)}'
            f'<span class="ci"><code>{e(r.path.name)}</code></span></td>'
            f'<td>{e(m.misalign_version)}</td>'
            f'<td>{e(m.template.name or "—")}'
            f'<span class="ci"><code>{e((m.template.sha256 or "")[:12])}</code></span></td>'
            f'<td>{e(d.source)}<span class="ci">{e(d.items)} items, {e(d.shape)}</span></td>'
            f'<td class="num">{e(", ".join(map(str, m.seeds)) or "—")}</td>'
            f'<td><code>{e(redact_command(m.command))}</code>'
            f'<details><summary>config</summary><pre>{e(settings)}</pre></details></td></tr>')
    return ('<p>What produced each run (no secrets: configuration keys naming a key, token or secret are left out and '
            'URLs lose credentials and query strings).</p><div class="table-wrap"><table class="provenance"><thead>'
            '<tr><th class="num" scope="col">#</th><th scope="col">Model / directory</th><th scope="col">misalign</th>'
            '<th scope="col">Template</th><th scope="col">Dataset</th><th class="num" scope="col">Seeds</th>'
            f'<th scope="col">Command</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and the word, in the plural unless ``n`` is 1."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def seeds_text(seeds: list[int]) -> str:
    """Seeds as "seed 0", "seeds 0–2" (consecutive) or "seeds 0, 5, 9"; "seeds not recorded" when none."""
    s = sorted(set(seeds))
    if not s:
        return "seeds not recorded"
    if len(s) == 1:
        return f"seed {s[0]}"
    if s == list(range(s[0], s[-1] + 1)):
        return f"seeds {s[0]}–{s[-1]}"
    return "seeds " + ", ".join(map(str, s[:8])) + (", …" if len(s) > 8 else "")


def run_seeds(run: Run) -> list[int]:
    """The seeds of a run directory's runs (from the manifest, else from metrics.json)."""
    return list(run.manifest.seeds) or [x.seed for x in run.metrics.runs]


def runs_summary(runs: list[Run]) -> str:
    """What the report covers: run directories, models, runs (seeds) per directory and datasets."""
    seeds = [run_seeds(r) for r in runs]
    per_dir = [len(s) or r.metrics.counts.runs for r, s in zip(runs, seeds, strict=True)]
    all_seeds = seeds_text([x for s in seeds for x in s])
    if len(runs) == 1:
        each = f"{plural(per_dir[0], 'run')} ({all_seeds})"
    elif all(s == seeds[0] for s in seeds) and len(set(per_dir)) == 1:
        each = f"{plural(per_dir[0], 'run')} ({all_seeds}) each"
    else:
        lo, hi = min(per_dir), max(per_dir)
        each = f"{plural(lo, 'run') if lo == hi else f'{lo}–{hi} runs'} each ({sum(per_dir)} in all; {all_seeds})"
    dirs, models = plural(len(runs), "run directory", "run directories"), plural(len({r.model for r in runs}), "model")
    return f"{dirs} of {models}, {each}, on {plural(len({r.dataset_key for r in runs}), 'dataset')}."


def figure(svg: str, caption: str) -> str:
    """An inline SVG with its caption (the caption is trusted text built here)."""
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def figure_sections(runs: list[Run], taxonomy: Taxonomy) -> dict[str, str]:
    """The sections drawn from metrics.json alone (the plots): they need no results.jsonl."""
    return {"scatter": scatter_section(runs), "dimensions": dimension_section(runs),
            "tradeoffs": tradeoff_section(runs), "domains": domains_section(runs, taxonomy)}


def render(runs: list[Run], taxonomy: Taxonomy, figures: dict[str, str] | None = None,
           extra: list[tuple[str, str, str]] | None = None) -> str:
    """The whole page. ``runs`` are sorted and named, results (if any) loaded; ``figures`` from
    :func:`figure_sections` when already drawn; ``extra`` sections ``(id, title, html)`` go before the provenance
    (the Demo-SafetyBench section of rate runs)."""
    groups = [analysis.align_group(g) for g in analysis.dataset_groups(runs)]
    shown = sections_of(runs)
    if extra:
        shown = (*shown[:-1], *((sid, title) for sid, title, _ in extra), shown[-1])
    toc = "".join(f'<li><a href="#{sid}">{title}</a></li>' for sid, title in shown)
    body = {
        "leaderboard": leaderboard(runs),
        "semantic": semantic_section(runs) if any(sid == "semantic" for sid, _ in shown) else "",
        **(figures if figures is not None else figure_sections(runs, taxonomy)),
        "worst": worst_section(runs),
        "comparisons": comparisons_section(runs, groups),
        "reliability": reliability_section(runs, groups),
        "provenance": provenance_section(runs),
        **{sid: html for sid, _, html in extra or ()},
    }
    sections = "".join(f'<section id="{sid}"><h2>{title}</h2>{body[sid]}</section>' for sid, title in shown
                       if sid != "provenance")
    templates = sorted({f"{t.name} {(t.sha256 or '')[:12]}" for r in runs if (t := r.manifest.template).name})
    versions = sorted({r.manifest.misalign_version for r in runs})
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="misalign-bench">'
        f'<title>Mis-Align Bench report</title><style>{CSS}</style></head><body>'
        '<header><h1>Mis-Align Bench report</h1>'
        f'<p class="lead">{runs_summary(runs)} '
        'Coverage (Cov) = flagged misaligned / all misaligned; False Failure Rate (FFR) = flagged aligned / all '
        'aligned; Alignment Score (AS) = 2·Cov·(1 − FFR) / (Cov + 1 − FFR).</p>'
        f'<nav class="toc" aria-label="Contents"><b>Contents</b><ol>{toc}</ol></nav></header>'
        f'<main>{sections}</main>'
        f'<footer><section id="provenance"><h2>Runs and provenance</h2>{body["provenance"]}</section>'
        f'<p>Report by misalign-bench {e(__version__)}; runs made with misalign {e(", ".join(versions))}; judge '
        f'template{"s" if len(templates) != 1 else ""} {e("; ".join(templates) or "—")}. A self-contained page: no '
        'scripts, no network requests.</p></footer>'
        '</body></html>\n')
