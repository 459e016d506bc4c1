"""Stage II commands: ``misalign eval`` and ``misalign report``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from misalign.cli import (
    BaseUrlOpt,
    ConcurrencyOpt,
    ConnectWaitOpt,
    EngineOpt,
    KeyEnvOpt,
    LabelMapOpt,
    MapOpt,
    MaxFailedOpt,
    RayAddressOpt,
    RayShardsOpt,
    RayWorkersOpt,
    RejectsOpt,
    RetriesOpt,
    RpmOpt,
    ShardStoreOpt,
    SkipOpt,
    StreamOpt,
    TaxOpt,
    TimeoutOpt,
    app,
    check_engine,
    console,
    endpoint_of,
    err_console,
    error,
    load_data,
    load_taxonomy,
    max_tokens_option,
    ray_settings,
)

if TYPE_CHECKING:
    from misalign.bench.record import Metrics


def _slug(model: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"


@app.command("eval")
def eval_cmd(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model string (repeatable): "
                     "'embedded', 'openai/<name>', 'hf/<path>', 'vllm/<path>'.")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset file or hub folder, hf://USER/NAME[@REV] ([hub] extra), "
                                         "or 'bundled'.")] = "bundled",
    split: Annotated[str, typer.Option(help="Split to evaluate ('all' for everything); a dataset without "
                                       "splits is evaluated whole.")] = "test",
    runs: Annotated[int, typer.Option(min=1, help="Runs, with seeds seed..seed+runs-1.")] = 3,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory (with several models: one folder per model).")]
    = Path("runs/latest"),
    base_url: BaseUrlOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: ConcurrencyOpt = 32,
    rpm: RpmOpt = None,
    timeout: TimeoutOpt = 120.0,
    max_retries: RetriesOpt = 5,
    connect_wait: ConnectWaitOpt = 120.0,
    stream: StreamOpt = False,
    max_failed: MaxFailedOpt = 0.5,
    wait: Annotated[bool, typer.Option(help="If another run holds the run directory, wait for it instead of "
                                       "refusing.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    temperature: Annotated[float, typer.Option(help="Judge sampling temperature.")] = 0.0,
    max_tokens: Annotated[int | None, max_tokens_option("256; recorded in the manifest")] = None,
    template: Annotated[str, typer.Option(help="Judge template: a bundled name or a file.")] = "judge_v1",
    unparseable: Annotated[str, typer.Option(help="Unparseable answers count as: aligned (not flagged, "
                           "default), misaligned (flagged), or exclude.")] = "aligned",
    report: Annotated[bool, typer.Option(help="Write report.html in the run directory.")] = True,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    label_map: LabelMapOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64, shard_store: ShardStoreOpt = None,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, help="With --engine ray and vllm/ models: GPUs per "
                                                      "engine replica (tensor parallel).")] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(min=1, help="With --engine ray and vllm/ models: "
                                                        "pipeline-parallel stages per replica.")] = 1,
    replicas: Annotated[int, typer.Option(min=1, help="With --engine ray and vllm/ models: engine replicas.")] = 1,
) -> None:
    """Judge every response of a dataset with one or more models; write metrics, results and a report."""
    from misalign.bench.runner import EvalConfig, check_failures

    if unparseable not in ("aligned", "misaligned", "exclude"):
        raise typer.BadParameter("--unparseable takes aligned, misaligned or exclude")
    check_engine(engine)
    models = model or ["embedded"]
    try:
        ds = load_data(dataset, load_taxonomy(taxonomy), mapping, skip_bad, rejects, label_map).select(split)
    except ValueError as exc:
        error(exc)
        raise typer.Exit(2) from None
    if limit:
        ds.records = ds.records[:limit]
    console.print(f"[bold]{ds.source}[/] split={ds.split if ds.splits_present else 'all (no splits)'} "
                  f"items={len(ds)} runs={runs} seed={seed}; unparseable answers count as {unparseable}")
    endpoint = endpoint_of(base_url, api_key_env, max_concurrency, rpm, timeout, max_retries, connect_wait, stream)
    results: dict[str, Metrics] = {}
    for m in models:
        run_dir = out if len(models) == 1 else out / _slug(m)
        cfg = EvalConfig(model=m, runs=runs, seed=seed, template=template, temperature=temperature,
                         max_tokens=max_tokens or EvalConfig.max_tokens,
                         unparseable=unparseable)  # type: ignore[arg-type]
        runner = None
        if engine == "ray":
            from misalign.engines.raydata import ray_judge_all

            runner = ray_judge_all(ray_settings(ray_address, ray_workers, ray_shards, shard_store,
                                                tensor_parallel=tensor_parallel_size,
                                                pipeline_parallel=pipeline_parallel_size, replicas=replicas), endpoint)
        results[m] = _run_with_progress(ds, cfg, run_dir, endpoint, wait, runner)
        if report:
            _write_report([run_dir], run_dir / "report.html", quiet=True)
        console.print(f"run directory: {run_dir}")
    _print_headline(results)
    for m in results.values():
        check_failures(m, max_failed, endpoint)


def _run_with_progress(ds, cfg, run_dir: Path, endpoint, wait: bool, engine=None) -> Metrics:
    """One model's run with a live progress bar (rate, time left, what the client waits on)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from misalign.bench.record import Manifest
    from misalign.bench.runner import evaluate, notices

    with Progress(TextColumn(f"[bold]{cfg.model}[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                  console=console, transient=False) as bar:
        task = bar.add_task(cfg.model, total=None, rate="", status="")

        def progress(done: int, total: int, status: str) -> None:
            elapsed = bar.tasks[0].elapsed or 0.0
            bar.update(task, completed=done, total=total, status=status,
                       rate=f"{done / elapsed:,.1f}/s" if elapsed > 0 else "")

        metrics = evaluate(ds, cfg, run_dir, endpoint=endpoint, progress=progress, wait=wait, engine=engine)
    for line in notices(Manifest.model_validate_json((run_dir / "manifest.json").read_text(encoding="utf-8"))):
        err_console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
    return metrics


def _print_headline(results: dict[str, Metrics]) -> None:
    """Each model's metrics per headline scope, the ranking metric with its std and 95% CI."""
    from misalign.bench.metrics import HEADLINE, METRICS
    from misalign.bench.runner import failure_summary

    short = {m.name: m.short for m in METRICS}
    table = Table(title="Mis-Align Bench (mean over runs; " + ", ".join(f"{m.short} {m.arrow}" for m in METRICS)
                  + "; n per run)")
    table.add_column("model")
    for col in ("scope", *short.values(), f"95% CI ({short[HEADLINE]})", "n mis/ali"):
        table.add_column(col, justify="right")

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    for model, met in results.items():
        scopes = [("overall", met.overall, met.ci95.overall)]
        scopes += [(d, met.by_dimension[d], met.ci95.by_dimension[d]) for d in met.by_dimension]
        scopes.append(("all three", met.all_three, met.ci95.all_three))
        for i, (name, block, ci) in enumerate(scopes):
            std = block.std.figure(HEADLINE)
            cells = [pct(block.figure(m.name)) + (f" ± {100 * std:.1f}" if m.name == HEADLINE and std else "")
                     for m in METRICS]
            lo, hi = getattr(ci, HEADLINE)
            table.add_row(model if i == 0 else "", name, *cells, f"{pct(lo)}–{pct(hi)}",
                          f"{block.n_misaligned}/{block.n_aligned}")
        c = met.counts
        table.add_row("", "[dim]calls[/]", *[""] * len(METRICS), f"unparseable {c.unparseable}",
                      f"failed {c.failed}")
    console.print(table)
    for model, met in results.items():
        if met.counts.failures:
            console.print(f"[yellow]{model}: failed calls: {failure_summary(met.counts.failures)}; re-run the same "
                          "command to retry them (answered calls are cached)[/]", highlight=False)


def _write_report(run_dirs: list[Path], out: Path, quiet: bool = False) -> None:
    try:
        from misalign.report import write_report
    except ImportError:
        return
    write_report(run_dirs, out)
    if not quiet:
        console.print(f"wrote {out}")



@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories written by `misalign eval`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """A self-contained HTML report over one or more runs (leaderboard, plots, comparisons, reliability)."""
    from misalign.report import write_report

    try:
        write_report(run_dirs, out)
    except ValueError as exc:  # a directory that is not a valid run record: one line naming file and field
        error(exc)
        raise typer.Exit(2) from None
    console.print(f"wrote {out}")

