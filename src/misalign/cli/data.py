"""``misalign taxonomy`` and ``misalign data``: inspect, export and split datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from misalign.cli import (
    LabelMapOpt,
    MapOpt,
    RejectsOpt,
    SkipOpt,
    TaxOpt,
    app,
    console,
    data_app,
    load_data,
    load_taxonomy,
)


@app.command()
def taxonomy(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    dimension: Annotated[str | None, typer.Option(help="Only this dimension.")] = None,
    paths: TaxOpt = None,
) -> None:
    """List the taxonomy: 14 safety, 56 value and 41 cultural domains by default, or your own files."""
    tax = load_taxonomy(paths)
    domains = [d for d in tax if dimension in (None, d.dimension)]
    if as_json:
        print(json.dumps([d.to_dict() for d in domains], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"Taxonomy {tax.version}: " + ", ".join(f"{n} {k}" for k, n in tax.counts().items()))
    for col in ("dimension", "id", "name", "definition"):
        table.add_column(col, overflow="fold")
    for d in domains:
        table.add_row(d.dimension, d.id, d.name, d.definition)
    console.print(table)


@data_app.command("inspect")
def data_inspect(
    source: Annotated[str, typer.Argument(help="A dataset file or hub folder, hf://USER/NAME, or 'bundled'.")] = (
        "bundled"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    label_map: LabelMapOpt = None,
) -> None:
    """Counts per split, per dimension, per semantic type and per domain; for a DICES file, conversations, raters
    and demographic groups."""
    from misalign.demo.dices import is_dices
    from misalign.io.summary import summarize

    if source != "bundled" and is_dices(source):
        _inspect_dices(source, as_json)
        return
    tax = load_taxonomy(taxonomy)
    summary = summarize(load_data(source, tax, mapping, skip_bad, rejects, label_map))
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    console.print(f"[bold]{summary['source']}[/]  shape={summary['shape']}  items={summary['items']}  "
                  f"sha256={summary['sha256'][:12]}  all three dimensions={summary['all_three']}")
    head = Table(title="Items per split, dimension and type")
    for col in ("split", "items"):
        head.add_column(col)
    for k, v in summary["per_split"].items():
        head.add_row(k, str(v))
    for k, v in summary["per_dimension"].items():
        head.add_row(f"[dim]dimension[/] {k}", str(v))
    for k, v in summary["per_semantic_type"].items():
        head.add_row(f"[dim]semantic type[/] {k}", str(v))
    console.print(head)
    per_domain = summary["per_domain"]
    table = Table(title="Items per domain")
    for col in ("dimension", "domain", "items"):
        table.add_column(col)
    for d in tax:
        n = per_domain.get(d.name, 0)
        table.add_row(d.dimension, d.name, str(n) if n else "[red]0[/]")
    console.print(table)


def _inspect_dices(source: str, as_json: bool) -> None:
    """``data inspect`` of a DICES file: conversations, raters, answers and raters per demographic group."""
    from misalign.demo.dices import load_dices

    summary = load_dices(source).summary()
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    console.print(f"[bold]{summary['source']}[/]  shape=dices ({summary['variant']})  conversations="
                  f"{summary['conversations']}  raters={summary['raters']}  ratings={summary['ratings']}  "
                  f"framings={summary['framings']}  sha256={summary['sha256'][:12]}", highlight=False)
    head = Table(title="Conversations and answers")
    for col in ("what", "value", "count"):
        head.add_column(col)
    for k, v in summary["safety_gold"].items():
        head.add_row("safety_gold", k, str(v))
    for k, v in summary["degree_of_harm"].items():
        head.add_row("degree_of_harm", k, str(v))
    for k, v in summary["answers"].items():
        head.add_row("Q_overall", k, str(v))
    console.print(head)
    groups = Table(title="Raters per demographic group")
    for col in ("attribute", "group", "raters"):
        groups.add_column(col)
    for attr, values in summary["groups"].items():
        for v, n in values.items():
            groups.add_row(attr, v, str(n))
    console.print(groups)


@data_app.command("export")
def data_export(
    source: Annotated[str, typer.Argument(help="A dataset file or hub folder, hf://USER/NAME, or 'bundled'.")],
    out: Annotated[Path, typer.Option("--out", help="Output file (format from its extension), or with --format hf "
                                      "a folder.")],
    fmt: Annotated[str, typer.Option("--format", help="auto (from --out's extension) or hf: a Hugging Face hub "
                                     "folder (Parquet per split and a README.md dataset card).")] = "auto",
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    license: Annotated[str | None, typer.Option("--license", help="With --format hf: the card's licence id "
                                                "(default: apache-2.0 for bundled, else unknown).")] = None,
    pretty_name: Annotated[str | None, typer.Option(help="With --format hf: the card's name.")] = None,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    label_map: LabelMapOpt = None,
) -> None:
    """Write any loadable dataset in our schema (JSONL, CSV or Parquet), or as a hub folder (--format hf)."""
    from misalign.io import write_dataset

    if fmt not in ("auto", "hf"):
        raise typer.BadParameter("--format takes auto or hf")
    ds = load_data(source, load_taxonomy(taxonomy), mapping, skip_bad, rejects, label_map).select(split)
    if fmt == "hf":
        from misalign.io.hub import bundled_card_body, write_hub_folder

        body = bundled_card_body() if ds.source == "bundled" else None
        counts = write_hub_folder(out, ds, license=license, pretty_name=pretty_name, card_body=body)
        per_split = ", ".join(f"{s} {n}" for s, n in counts.items())
        console.print(f"wrote {sum(counts.values())} records to {out} ({per_split}) and its README.md",
                      highlight=False, soft_wrap=True)
        return
    n = write_dataset(out, ds.records)
    console.print(f"wrote {n} records to {out}")


@data_app.command("split")
def data_split(
    source: Annotated[str, typer.Argument(help="A dataset file, or 'bundled'.")],
    out: Annotated[Path, typer.Option("--out", help="Output file; format from its extension.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    label_map: LabelMapOpt = None,
) -> None:
    """Assign a seeded 80/10/10 train/validation/test split, stratified by domain; the items of one prompt (from
    `misalign respond --per-generator`) share a split."""
    from misalign.build.split import prompt_group, split_items
    from misalign.io import write_dataset

    ds = load_data(source, load_taxonomy(taxonomy), mapping, skip_bad, rejects, label_map)
    n = write_dataset(out, split_items(ds.records, seed=seed, group=prompt_group))
    console.print(f"wrote {n} records to {out}")


