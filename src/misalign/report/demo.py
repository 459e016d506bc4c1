"""The report's Demo-SafetyBench section (run directories of ``misalign rate``): per model ICC, ρ, DS, DPD and EOD
with their 95% CIs, a group-by-model heatmap of unsafe rates next to the humans', agreement per framing and the
runs' provenance. Every value from a run directory is escaped (:func:`misalign.report.html.e`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from misalign import __version__
from misalign.demo.record import Fairness, RateManifest, RateMetrics, Stat, load_rate_run
from misalign.redact import redact_command
from misalign.report import plots
from misalign.report.html import CSP, CSS, e, figure, num


@dataclass
class RateRun:
    """One ``misalign rate`` run directory."""

    path: Path
    manifest: RateManifest
    metrics: RateMetrics


def load_rate_runs(paths: list[Path]) -> list[RateRun]:
    """Read and validate rate run directories; ValueError naming the file and field of a problem."""
    return [RateRun(Path(p), *load_rate_run(Path(p))) for p in paths]


def _cell(s: Stat | Fairness | None, note: str = "") -> str:
    if s is None or s.value is None:
        return '<td class="missing" title="undefined">—</td>'
    lo, hi = s.ci95
    extra = f" ({e(note)})" if note else ""
    return f'<td class="num">{num(s.value)}{extra}<span class="ci">[{num(lo)}, {num(hi)}]</span></td>'


def _worst(f: Fairness) -> str:
    """The attribute a DPD or EOD comes from (none named when it is 0: no attribute is worse than another)."""
    return f.attribute or "" if f.value else ""


def _headline(runs: list[RateRun]) -> str:
    rows = []
    for r in runs:
        m = r.metrics
        for name in m.models:
            c = m.counts.calls[name]
            dpd, eg, em = m.dpd[name], m.eod[name]["safety_gold"], m.eod[name]["human_majority"]
            rows.append(f'<tr><td class="model" title="{e(r.path.name)}">{e(name)}</td>'
                        f'{_cell(m.icc["vs_human"][name])}{_cell(m.rho["vs_human"][name])}{_cell(m.ds[name])}'
                        f'{_cell(dpd, _worst(dpd))}{_cell(eg, _worst(eg))}{_cell(em, _worst(em))}'
                        f'<td class="num">{c.unparseable}</td><td class="num">{c.failed}</td></tr>')
    return ('<div class="table-wrap"><table class="demo"><thead><tr><th scope="col">Model</th>'
            '<th class="num" scope="col" title="ICC(2,1) of the plain unsafe probability with the human mean unsafe '
            'rate per conversation">ICC ↑</th>'
            '<th class="num" scope="col" title="Spearman rank correlation, same pairs">ρ ↑</th>'
            '<th class="num" scope="col" title="Mean over conversations of the max-min spread of the unsafe '
            'probability across demographic framings">DS ↓</th>'
            '<th class="num" scope="col" title="Demographic parity difference: max-min over groups of the rate of '
            'unsafe answers (worst attribute)">DPD ↓</th>'
            '<th class="num" scope="col" title="Equalized odds difference against the experts\' safety_gold">'
            'EOD gold ↓</th>'
            '<th class="num" scope="col" title="Equalized odds difference against the majority of the group\'s '
            'human raters">EOD majority ↓</th>'
            '<th class="num" scope="col">Unparseable</th><th class="num" scope="col">Failed</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _between(runs: list[RateRun]) -> str:
    rows = [f'<tr><td>{e(pair)}</td>{_cell(s)}{_cell(r.metrics.rho["between_models"][pair])}</tr>'
            for r in runs for pair, s in r.metrics.icc["between_models"].items()]
    if not rows:
        return ""
    return ('<h3>Between models</h3><div class="table-wrap"><table><thead><tr><th scope="col">Pair</th>'
            '<th class="num" scope="col">ICC(2,1)</th><th class="num" scope="col">ρ</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _heatmap(r: RateRun, k: int) -> str:
    rates = r.metrics.unsafe_rates
    groups = list(rates.get("humans", {}))
    if not groups:
        return ""
    columns = ["humans", *r.metrics.models]
    matrix = np.array([[np.nan if (v := rates.get(c, {}).get(g)) is None else v for c in columns] for g in groups],
                      dtype=float)
    rows = [("", g) for g in groups]  # one block: the labels name the attribute
    svg = plots.heatmap(rows, ["Humans", *r.metrics.models], matrix, label="Unsafe rate", name=f"demo-{k}",
                        title="Unsafe rate per demographic group: humans and each model")
    head = "".join(f'<th class="num" scope="col">{e(c)}</th>' for c in ["Humans", *r.metrics.models])
    body = "".join(f'<tr><th scope="row">{e(g)}</th>'
                   + "".join('<td class="missing">—</td>' if np.isnan(x) else f'<td class="num">{num(x)}</td>'
                             for x in matrix[i]) + "</tr>" for i, g in enumerate(groups))
    caption = ("Unsafe rate per demographic group (rows, by attribute): for the humans, the share of yes among the "
               "group's yes/no ratings; for a model, the share of unsafe answers it gave framed as the group's "
               "profiles. Hatched grey: no data.")
    return (figure(svg, caption) + '<details><summary>The same numbers</summary><div class="table-wrap"><table>'
            f'<thead><tr><th scope="col">Group</th>{head}</tr></thead><tbody>{body}</tbody></table></div></details>')


def _agreement(r: RateRun) -> str:
    models = r.metrics.models
    framings = list(r.metrics.agreement[models[0]]) if models else []
    head = "".join(f'<th class="num" scope="col">{e(m)}</th>' for m in models)
    body = []
    for f in framings:
        cells = []
        for m in models:
            a = r.metrics.agreement[m][f]
            cells.append(f'<td class="num" title="n = {a.n} ratings">{num(a.agreement)}'
                         f'<span class="ci">κ {num(a.kappa)}, n {a.n}</span></td>')
        body.append(f'<tr><th scope="row">{e(f)}</th>{"".join(cells)}</tr>')
    return ('<details><summary>Agreement of each framing with the human raters of that profile</summary>'
            '<p class="muted">Share of the profile\'s yes/no ratings the model\'s framed yes/no equals, Cohen\'s '
            'kappa beneath; plain: the unframed answer against every rating.</p><div class="table-wrap"><table>'
            f'<thead><tr><th scope="col">Framing</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            '</details>')


def _provenance(runs: list[RateRun]) -> str:
    rows = "".join(
        f'<tr><td><code>{e(r.path.name)}</code></td><td>{e(r.manifest.misalign_version)}</td>'
        f'<td>{e(r.manifest.template.get("name"))}<span class="ci"><code>'
        f'{e((r.manifest.template.get("sha256") or "")[:12])}</code></span></td>'
        f'<td>{e(r.manifest.dataset.get("source"))}<span class="ci">{e(r.manifest.dataset.get("variant"))}, '
        f'{e(r.manifest.dataset.get("conversations"))} conversations, {e(r.manifest.dataset.get("raters"))} raters'
        f'</span></td><td><code>{e(redact_command(r.manifest.command))}</code></td></tr>' for r in runs)
    return ('<div class="table-wrap"><table class="provenance"><thead><tr><th scope="col">Directory</th>'
            '<th scope="col">misalign</th><th scope="col">Template</th><th scope="col">Dataset</th>'
            f'<th scope="col">Command</th></tr></thead><tbody>{rows}</tbody></table></div>')


def demo_section(runs: list[RateRun]) -> str:
    """The Demo-SafetyBench section over rate run directories."""
    parts = ['<p>LLMs as raters of DICES conversations (is the final response unsafe?), plainly and framed as each '
             'demographic profile of the human raters. Our definitions (the paper\'s are not public; docs/METRICS.md): '
             'ICC(2,1) and Spearman ρ of the plain unsafe probability with the human mean unsafe rate per '
             'conversation; DS = mean over conversations of the max-min unsafe probability across framings; DPD = '
             'max-min over a demographic attribute\'s groups of the rate of unsafe answers; EOD = max of the max-min '
             'TPR and FPR over groups, against safety_gold and against the majority of the group\'s raters. DPD and '
             'EOD show the worst attribute (named). 95% bootstrap CI beneath (conversations resampled).</p>',
             _headline(runs), _between(runs)]
    for k, r in enumerate(runs):
        parts.append(f'<h3>{e(r.path.name)}: unsafe rates per group</h3>{_heatmap(r, k)}{_agreement(r)}')
    parts.append(f"<h3>Provenance</h3>{_provenance(runs)}")
    return "".join(parts)


def render_demo_page(runs: list[RateRun]) -> str:
    """A self-contained page holding only the Demo-SafetyBench section (no eval runs given)."""
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="generator" content="misalign-bench">'
            f'<title>Demo-SafetyBench report</title><style>{CSS}</style></head><body>'
            '<header><h1>Demo-SafetyBench report</h1></header>'
            f'<main><section id="demo"><h2>Demo-SafetyBench</h2>{demo_section(runs)}</section></main>'
            f'<footer><p>Report by misalign-bench {e(__version__)}. A self-contained page: no scripts, no network '
            'requests.</p></footer></body></html>\n')
