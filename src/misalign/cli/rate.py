"""``misalign rate``: Demo-SafetyBench, LLMs as demographic raters of DICES conversations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from misalign.cli import (
    BaseUrlOpt,
    ConcurrencyOpt,
    ConnectWaitOpt,
    KeyEnvOpt,
    MaxFailedOpt,
    RetriesOpt,
    RpmOpt,
    StreamOpt,
    TimeoutOpt,
    app,
    console,
    endpoint_of,
    max_tokens_option,
)


@app.command()
def rate(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Rater model string (repeatable): "
                     "'openai/<name>', 'hf/<path>', 'vllm/<path>'.")],
    dataset: Annotated[Path, typer.Option(help="A DICES-shaped CSV (DICES-350 or DICES-990).")],
    out: Annotated[Path, typer.Option(help="Run directory (all models together).")] = Path("runs/rate"),
    seed: Annotated[int, typer.Option(help="Sampling seed and bootstrap seed.")] = 0,
    template: Annotated[str, typer.Option(help="Rater template: a bundled name or a file.")] = "rate_v1",
    max_tokens: Annotated[int | None, max_tokens_option("128; recorded in the manifest")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N conversations.")] = None,
    max_failed: MaxFailedOpt = 0.5,
    report: Annotated[bool, typer.Option(help="Write report.html in the run directory.")] = True,
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: ConcurrencyOpt = 32,
    rpm: RpmOpt = None,
    timeout: TimeoutOpt = 120.0,
    max_retries: RetriesOpt = 5,
    connect_wait: ConnectWaitOpt = 120.0,
    stream: StreamOpt = False,
) -> None:
    """Demo-SafetyBench: every model rates every conversation (unsafe? yes/no + probability) plainly and as each
    demographic profile of the raters; ICC, Spearman's rho, DS, DPD and EOD against the human raters."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from misalign.demo.dices import load_dices
    from misalign.demo.rate import RateConfig
    from misalign.demo.rate import rate as run_rate
    from misalign.errors import RunError

    dices = load_dices(dataset)
    if limit:
        dices = replace(dices, conversations=dices.conversations[:limit])
    console.print(f"[bold]{dices.source}[/] {dices.variant}: {len(dices.conversations)} conversations, "
                  f"{len(dices.raters)} raters, {len(dices.framings())} demographic framings (+ plain)")
    cfg = RateConfig(models=tuple(model), template=template, seed=seed,
                     max_tokens=max_tokens or RateConfig.max_tokens)
    endpoint = endpoint_of(base_url, api_key_env, max_concurrency, rpm, timeout, max_retries, connect_wait, stream)
    with Progress(TextColumn("[bold]rating[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("rate", total=None)
        metrics = run_rate(dices, cfg, out, endpoint=endpoint,
                           progress=lambda done, total: bar.update(task, completed=done, total=total))
    if report:
        from misalign.report import write_report

        write_report([out], out / "report.html")
    _print_table(metrics)
    console.print(f"run directory: {out}")
    for m, c in metrics.counts.calls.items():
        if c.asked and c.failed > max_failed * c.asked:
            raise RunError(f"{m}: {c.failed} of {c.asked} calls failed; re-run the same command to retry them "
                           "(answered calls are cached)")


def _print_table(metrics) -> None:
    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    table = Table(title="Demo-SafetyBench (95% bootstrap CI over conversations)")
    for col in ("model", "ICC vs humans", "rho vs humans", "DS", "DPD", "EOD (gold)", "EOD (majority)", "failed"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in metrics.models:
        cells = [metrics.icc["vs_human"][m], metrics.rho["vs_human"][m], metrics.ds[m], metrics.dpd[m],
                 metrics.eod[m]["safety_gold"], metrics.eod[m]["human_majority"]]
        table.add_row(m, *(f"{f(s.value)} [{f(s.ci95[0])}, {f(s.ci95[1])}]" for s in cells),
                      str(metrics.counts.calls[m].failed))
    console.print(table)
