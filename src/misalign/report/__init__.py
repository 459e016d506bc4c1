"""The HTML report: one self-contained page over one or more run directories written by ``misalign eval``.

Leaderboard, plots (Coverage vs 1 − FFR, per-dimension bars, trade-offs, a per-domain heatmap), each model's
worst domains with examples of its mistakes, paired comparisons and judge reliability between runs on the same
dataset, and the provenance of every run; a Demo-SafetyBench section for run directories of ``misalign rate``.
No scripts and no network requests; all data is HTML-escaped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from misalign.report.data import Run, assign_names, load_results, load_run, read_results, sort_runs
from misalign.taxonomy import Taxonomy

__all__ = ["load_runs", "render_report", "write_report"]


def _load_metrics(run_dirs: Sequence[Path | str]) -> list[Run]:
    """Read, name and rank every run directory (manifest and metrics only); ValueError naming a bad one."""
    if not run_dirs:
        raise ValueError("no run directories given")
    runs = [run for d in run_dirs for run in _load(Path(d))]
    assign_names(runs)
    return sort_runs(runs)


def _load(path: Path) -> list[Run]:
    """A run directory, or the runs of an inspect log of ``misalign_bench`` (a ``.eval`` file, or a folder of them)."""
    from misalign.interop.inspect_log import inspect_logs, is_task_log, read_inspect_log

    logs = inspect_logs(path)
    if logs is None:
        return [load_run(path)]
    if path.is_dir():
        logs = [p for p in logs if is_task_log(p)] or logs  # a log folder holds other tasks' logs too
    runs = []
    for p in logs:
        manifest, metrics, rows = read_inspect_log(p)
        data = b"".join(r.model_dump_json().encode() + b"\n" for r in rows)
        runs.append(Run(path=p, manifest=manifest, metrics=metrics, results=read_results(p, data)))
    return runs


def load_runs(run_dirs: Sequence[Path | str]) -> list[Run]:
    """Load, name and rank run directories, each results.jsonl parsed once; ValueError naming a bad directory."""
    runs = _load_metrics(run_dirs)
    for r in runs:
        if r.results is None:  # an inspect log's results come with it
            load_results(r)
    return runs


def _draw(runs: list[Run], taxonomy: Taxonomy) -> dict[str, str]:
    from misalign.report.html import figure_sections

    figures = figure_sections(runs, taxonomy)
    import scipy.stats  # noqa: F401  (warm: the paired tests need it next)

    return figures


def render_report(run_dirs: Sequence[Path | str]) -> str:
    """The report's HTML text.

    The plots need only metrics.json, so they are drawn in a second thread while the main thread parses the
    results.jsonl files in pyarrow's C++ code (which releases the GIL): the two overlap on a multi-core machine.
    """
    from misalign.demo.record import is_rate_run

    rate_dirs = [Path(d) for d in run_dirs if is_rate_run(Path(d))]
    extra = None
    if rate_dirs:  # Demo-SafetyBench run directories (misalign rate): their own section
        from misalign.report.demo import demo_section, load_rate_runs, render_demo_page

        rate_runs = load_rate_runs(rate_dirs)
        run_dirs = [d for d in run_dirs if not is_rate_run(Path(d))]
        if not run_dirs:
            return render_demo_page(rate_runs)
        extra = [("demo", "Demo-SafetyBench", demo_section(rate_runs))]
    runs = _load_metrics(run_dirs)  # every directory is checked before the slow part
    taxonomy = Taxonomy.default()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="misalign-report") as pool:
        drawing = pool.submit(_draw, runs, taxonomy)
        for r in runs:
            if r.results is None:
                load_results(r)
        figures = drawing.result()
    from misalign.report.html import render

    return render(runs, taxonomy, figures, extra)


def write_report(run_dirs: list[Path], out: Path) -> None:
    """Write one self-contained HTML report over ``run_dirs`` to ``out`` (atomically)."""
    html = render_report(run_dirs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
