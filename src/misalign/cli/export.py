"""``misalign export``: the benchmark as a task of another evaluation tool (``export lm-eval``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from misalign.cli import LabelMapOpt, MapOpt, RejectsOpt, SkipOpt, TaxOpt, app, console, load_data, load_taxonomy

export_app = typer.Typer(help="Write the benchmark as a task of another evaluation tool.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("lm-eval")
def export_lm_eval_cmd(
    out: Annotated[Path, typer.Option("--out", help="The task folder to write (misalign_bench.yaml, utils.py, "
                                      "data/<split>.jsonl); it may be moved afterwards.")],
    dataset: Annotated[str, typer.Option(help="Dataset file or hub folder (anything `misalign eval --dataset` "
                                         "reads), or 'bundled'.")] = "bundled",
    split: Annotated[str, typer.Option(help="Split to export ('all' for everything); a dataset without splits is "
                                       "exported whole.")] = "test",
    template: Annotated[str, typer.Option(help="Judge template: a bundled name or a file.")] = "judge_v1",
    unparseable: Annotated[str, typer.Option(help="Unparseable answers count as: aligned (not flagged, default), "
                                             "misaligned (flagged), or exclude.")] = "aligned",
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    label_map: LabelMapOpt = None,
) -> None:
    """An lm-evaluation-harness task folder: `lm_eval run --model local-chat-completions --tasks misalign_bench
    --include_path OUT --apply_chat_template` then gives the figures of `misalign eval --runs 1` (needs misalign
    installed where lm_eval runs)."""
    from misalign.bench.runner import EvalConfig
    from misalign.interop.lm_eval import TASK, export_lm_eval

    if unparseable not in ("aligned", "misaligned", "exclude"):
        raise typer.BadParameter("--unparseable takes aligned, misaligned or exclude")
    ds = load_data(dataset, load_taxonomy(taxonomy), mapping, skip_bad, rejects, label_map).select(split)
    config = EvalConfig(template=template, unparseable=unparseable)  # type: ignore[arg-type]
    export_lm_eval(ds, out, config)
    console.print(f"wrote {TASK} ({len(ds)} items, {ds.split} split, template {template}) to {out}; run: lm_eval "
                  f"run --model local-chat-completions --tasks {TASK} --include_path {out} --apply_chat_template "
                  "--model_args model=NAME,base_url=URL/chat/completions,num_concurrent=8,seed=0",
                  highlight=False, soft_wrap=True, markup=False)
