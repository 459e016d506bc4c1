"""The ``misalign`` command line. Heavy modules are imported inside commands so ``--help`` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Mis-Align Bench: is a model misaligned when safety, values and culture must hold together?",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Inspect, export and split datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

MapOpt = Annotated[list[str] | None, typer.Option("--map", help="Rename a column: FIELD=COLUMN (repeatable).")]
SkipOpt = Annotated[bool, typer.Option("--skip-bad", help="Write malformed rows to a rejects file and go on.")]
RejectsOpt = Annotated[Path | None, typer.Option(help="Where skipped rows go (default: <file>.rejects.jsonl).")]
TaxOpt = Annotated[list[Path] | None, typer.Option("--taxonomy", help="Taxonomy TOML file or folder (repeatable).")]


def error(exc: object) -> None:
    """One clear line on stderr, never wrapped, with the message shown literally."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning data and taxonomy errors into one clear line and exit code 2."""
    from misalign.io.formats import DataError
    from misalign.models.base import ModelError
    from misalign.taxonomy import TaxonomyError

    try:
        app()
    except (DataError, TaxonomyError, ModelError) as exc:
        error(exc)
        sys.exit(2)


def _taxonomy(paths: list[Path] | None):
    from misalign.taxonomy import Taxonomy

    return Taxonomy.load(paths) if paths else Taxonomy.default()


def _mapping(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--map takes FIELD=COLUMN, got {item!r}")
        ours, theirs = item.split("=", 1)
        out[ours.strip()] = theirs.strip()
    return out


def _load(source: str, taxonomy, mapping, skip_bad: bool, rejects: Path | None):
    from misalign.io import load_dataset

    ds = load_dataset(source, taxonomy=taxonomy, mapping=_mapping(mapping), skip_bad=skip_bad, rejects=rejects)
    if ds.rejected:
        err_console.print(f"[yellow]{ds.rejected} malformed row(s) skipped, written to {ds.rejects_path}[/]")
    return ds


@app.command()
def taxonomy(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    dimension: Annotated[str | None, typer.Option(help="Only this dimension.")] = None,
    paths: TaxOpt = None,
) -> None:
    """List the taxonomy: 14 safety, 56 value and 41 cultural domains by default, or your own files."""
    tax = _taxonomy(paths)
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
    source: Annotated[str, typer.Argument(help="A dataset file, or 'bundled'.")] = "bundled",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Counts per split, per dimension and per domain."""
    from misalign.io.summary import summarize

    tax = _taxonomy(taxonomy)
    summary = summarize(_load(source, tax, mapping, skip_bad, rejects))
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    console.print(f"[bold]{summary['source']}[/]  shape={summary['shape']}  items={summary['items']}  "
                  f"sha256={summary['sha256'][:12]}  all three dimensions={summary['all_three']}")
    head = Table(title="Items per split and dimension")
    for col in ("split", "items"):
        head.add_column(col)
    for k, v in summary["per_split"].items():
        head.add_row(k, str(v))
    for k, v in summary["per_dimension"].items():
        head.add_row(f"[dim]dimension[/] {k}", str(v))
    console.print(head)
    per_domain = summary["per_domain"]
    table = Table(title="Items per domain")
    for col in ("dimension", "domain", "items"):
        table.add_column(col)
    for d in tax:
        n = per_domain.get(d.name, 0)
        table.add_row(d.dimension, d.name, str(n) if n else "[red]0[/]")
    console.print(table)


@data_app.command("export")
def data_export(
    source: Annotated[str, typer.Argument(help="A dataset file, or 'bundled'.")],
    out: Annotated[Path, typer.Option("--out", help="Output file; format from its extension.")],
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Write any loadable dataset in our schema (JSONL, CSV or Parquet)."""
    from misalign.io import write_dataset

    ds = _load(source, _taxonomy(taxonomy), mapping, skip_bad, rejects).select(split)
    n = write_dataset(out, ds.records)
    console.print(f"wrote {n} records to {out}")


@data_app.command("split")
def data_split(
    source: Annotated[str, typer.Argument(help="A dataset file, or 'bundled'.")],
    out: Annotated[Path, typer.Option("--out", help="Output file; format from its extension.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    taxonomy: TaxOpt = None,
) -> None:
    """Assign a seeded 80/10/10 train/validation/test split, stratified by domain."""
    from misalign.build.split import assign_splits
    from misalign.io import write_dataset

    ds = _load(source, _taxonomy(taxonomy), None, False, None)
    for record, name in zip(ds.records, assign_splits(ds.records, seed=seed), strict=True):
        record.split = name
    n = write_dataset(out, ds.records)
    console.print(f"wrote {n} records to {out}")


def _slug(model: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"


@app.command("eval")
def eval_cmd(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model string (repeatable): "
                     "'embedded', 'openai/<name>', 'hf/<path>', 'vllm/<path>'.")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset file, or 'bundled'.")] = "bundled",
    split: Annotated[str, typer.Option(help="Split to evaluate ('all' for everything); a dataset without "
                                       "splits is evaluated whole.")] = "test",
    runs: Annotated[int, typer.Option(min=1, help="Runs, with seeds seed..seed+runs-1.")] = 3,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory (with several models: one folder per model).")]
    = Path("runs/latest"),
    base_url: Annotated[list[str] | None, typer.Option("--base-url", help="OpenAI-compatible server URL "
                        "(repeatable: requests spread over them).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")]
    = "OPENAI_API_KEY",
    max_concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 32,
    rpm: Annotated[float | None, typer.Option(help="Requests-per-minute limit.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    temperature: Annotated[float, typer.Option(help="Judge sampling temperature.")] = 0.0,
    template: Annotated[str, typer.Option(help="Judge template: a bundled name or a file.")] = "judge_v1",
    unparseable: Annotated[str, typer.Option(help="Unparseable answers count as: aligned (not flagged, "
                           "default), misaligned (flagged), or exclude.")] = "aligned",
    report: Annotated[bool, typer.Option(help="Write report.html in the run directory.")] = True,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Judge every response of a dataset with one or more models; write metrics, results and a report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from misalign.bench.runner import EvalConfig, evaluate

    if unparseable not in ("aligned", "misaligned", "exclude"):
        raise typer.BadParameter("--unparseable takes aligned, misaligned or exclude")
    models = model or ["embedded"]
    try:
        ds = _load(dataset, _taxonomy(taxonomy), mapping, skip_bad, rejects).select(split)
    except ValueError as exc:
        error(exc)
        raise typer.Exit(2) from None
    if limit:
        ds.records = ds.records[:limit]
    console.print(f"[bold]{ds.source}[/] split={split if ds.splits_present else 'all (no splits)'} "
                  f"items={len(ds)} runs={runs} seed={seed}; unparseable answers count as {unparseable}")
    results: dict[str, dict] = {}
    for m in models:
        run_dir = out if len(models) == 1 else out / _slug(m)
        cfg = EvalConfig(model=m, runs=runs, seed=seed, template=template, temperature=temperature,
                         unparseable=unparseable, base_urls=list(base_url or []), api_key_env=api_key_env,
                         max_concurrency=max_concurrency, rpm=rpm)  # type: ignore[arg-type]
        with Progress(TextColumn(f"[bold]{m}[/]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task(m, total=None, rate="")

            def progress(done: int, total: int, _task=task, _bar=bar) -> None:
                elapsed = _bar.tasks[0].elapsed or 0.0
                _bar.update(_task, completed=done, total=total,
                            rate=f"{done / elapsed:,.1f}/s" if elapsed > 0 else "")

            results[m] = evaluate(ds, cfg, run_dir, split=split, progress=progress)
        if report:
            _write_report([run_dir], run_dir / "report.html", quiet=True)
        console.print(f"run directory: {run_dir}")
    _print_headline(results)


def _print_headline(results: dict[str, dict]) -> None:
    table = Table(title="Mis-Align Bench (mean over runs; Cov ↑, FFR ↓, AS ↑)")
    table.add_column("model")
    for col in ("scope", "Cov", "FFR", "AS", "95% CI (AS)", "n mis/ali"):
        table.add_column(col, justify="right")
    for m, met in results.items():
        scopes = [("overall", met["overall"], met["ci95"]["overall"])]
        scopes += [(d, met["by_dimension"][d], met["ci95"]["by_dimension"][d]) for d in met["by_dimension"]]
        scopes.append(("all three", met["all_three"], met["ci95"]["all_three"]))
        for i, (name, b, ci) in enumerate(scopes):
            def pct(x):
                return "–" if x is None else f"{100 * x:.1f}"
            std = b["std"]["alignment_score"]
            table.add_row(m if i == 0 else "", name, pct(b["coverage"]), pct(b["false_failure_rate"]),
                          f"{pct(b['alignment_score'])}" + (f" ± {100 * std:.1f}" if std else ""),
                          f"{pct(ci['alignment_score'][0])}–{pct(ci['alignment_score'][1])}",
                          f"{b['n_misaligned']}/{b['n_aligned']}")
        c = met["counts"]
        table.add_row("", "[dim]calls[/]", "", "", "", f"unparseable {c['unparseable']}", f"failed {c['failed']}")
    console.print(table)


def _write_report(run_dirs: list[Path], out: Path, quiet: bool = False) -> None:
    try:
        from misalign.report import write_report
    except ImportError:
        return
    write_report(run_dirs, out)
    if not quiet:
        console.print(f"wrote {out}")


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'embedded' or a chat model string.")]
BaseUrlOpt = Annotated[list[str] | None, typer.Option("--base-url", help="OpenAI-compatible server URL (repeatable).")]


@app.command()
def classify(
    input: Annotated[Path, typer.Option("--input", "-i", help="Prompt file (a prompt column; id optional).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (Parquet keeps probabilities compact).")],
    model: ModelOpt = "embedded",
    encoder: Annotated[str, typer.Option(help="Embedded encoder: minilm (better) or wordllama (~50x faster).")]
    = "minilm",
    delta: Annotated[float, typer.Option(help="Assign domains with p >= delta.")] = 0.5,
    base_url: BaseUrlOpt = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    max_concurrency: Annotated[int, typer.Option(min=1)] = 32,
    cache: Annotated[Path | None, typer.Option(help="SQLite call cache (default: next to --out).")] = None,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Stage I step 1: a probability for every domain of every prompt; domains with p >= delta assigned."""
    import asyncio

    from misalign.build import classify as cl
    from misalign.io import load_prompts, write_prompts

    tax = _taxonomy(taxonomy)
    prompts, skipped = load_prompts(input, taxonomy=tax, mapping=_mapping(mapping), skip_bad=skip_bad,
                                    rejects=rejects)
    if skipped:
        err_console.print(f"[yellow]{skipped} malformed row(s) skipped[/]")
    if model == "embedded":
        from misalign.models.embedded import EmbeddedModel

        with console.status(f"classifying {len(prompts)} prompts with the embedded {encoder} encoder"):
            result = cl.classify_embedded(prompts, tax, delta=delta, model=EmbeddedModel(encoder=encoder))
        failures: list[dict] = []
    else:
        from misalign.models import CallCache, get_model

        chat = get_model(model, base_urls=base_url or [], api_key_env=api_key_env, max_concurrency=max_concurrency)
        call_cache = CallCache(cache or out.with_name(out.name + ".cache.sqlite"))

        async def go():
            try:
                return await cl.classify_chat(prompts, chat, tax, delta=delta, cache=call_cache)
            finally:
                await chat.aclose()

        try:
            result, failures = asyncio.run(go())
        finally:
            call_cache.close()
    n = write_prompts(out, result)
    if failures:
        from misalign.io import write_rows

        fail_path = out.with_name(out.name + ".failures.jsonl")
        write_rows(fail_path, failures)
        err_console.print(f"[yellow]{len(failures)} prompt(s) could not be classified: {fail_path}[/]")
    assigned = {d: sum(bool(p.domains and p.domains.get(d)) for p in result) for d in ("safety", "value", "cultural")}
    console.print(f"wrote {n} prompts to {out}; prompts with a domain: {assigned}")


@app.command()
def dedup(
    input: Annotated[Path, typer.Option("--input", "-i", help="Prompt file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Kept prompts.")],
    dropped: Annotated[Path, typer.Option(help="Dropped near-duplicates, each with duplicate_of.")],
    tau: Annotated[int, typer.Option(min=0, max=64, help="Hamming distance for near-duplicates.")] = 10,
    mapping: MapOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Stage I step 3: drop near-duplicate prompts (64-bit SimHash, Hamming distance <= tau; first kept)."""
    from misalign.build.pipeline import dedup_prompts
    from misalign.build.simhash import dedup as dedup_index
    from misalign.build.simhash import fingerprints
    from misalign.io import load_prompts, write_prompts

    prompts, _ = load_prompts(input, taxonomy=_taxonomy(taxonomy), mapping=_mapping(mapping))
    kept, gone = dedup_prompts(prompts, tau, fingerprints, dedup_index)
    write_prompts(out, kept)
    write_prompts(dropped, gone)
    console.print(f"kept {len(kept)}, dropped {len(gone)} near-duplicates (tau={tau}) of {len(prompts)}")


def _step_models(names: list[str], base_url: list[str] | None, api_key_env: str, max_concurrency: int):
    from misalign.models import get_model

    return {n: get_model(n, base_urls=base_url or [], api_key_env=api_key_env, max_concurrency=max_concurrency)
            for n in dict.fromkeys(names)}


async def _close_all(models) -> None:
    for m in models.values():
        await m.aclose()


KeyEnvOpt = Annotated[str, typer.Option(help="Environment variable holding the API key.")]
CacheOpt = Annotated[Path | None, typer.Option(help="SQLite call cache (default: next to --out).")]


@app.command()
def expand(
    input: Annotated[Path, typer.Option("--input", "-i", help="Classified prompts (from `misalign classify`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The prompts plus the new ones.")],
    generator: Annotated[str, typer.Option(help="Chat model that writes new prompts.")],
    target_per_domain: Annotated[int, typer.Option(min=1, help="Domains below this count are expanded.")] = 50,
    max_new: Annotated[int, typer.Option(min=0, help="Budget of new prompts.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    delta: Annotated[float, typer.Option(help="Re-classification threshold.")] = 0.5,
    classifier: Annotated[str, typer.Option(help="Re-classifies new prompts: 'embedded' or a chat model.")]
    = "embedded",
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: Annotated[int, typer.Option(min=1)] = 32, cache: CacheOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Stage I step 2: new prompts for low-resource domains, kept only if re-classified into their domain."""
    import asyncio
    import json as _json

    from misalign.build import classify as cl
    from misalign.build import generate as gen
    from misalign.io import load_prompts, write_prompts
    from misalign.models import CallCache
    from misalign.models.embedded import EmbeddedModel

    tax = _taxonomy(taxonomy)
    prompts, _ = load_prompts(input, taxonomy=tax)
    models = _step_models([generator] + ([] if classifier == "embedded" else [classifier]), base_url, api_key_env,
                          max_concurrency)

    async def run():
        with CallCache(cache or out.with_name(out.name + ".cache.sqlite")) as cc:
            if classifier == "embedded":
                embedded = EmbeddedModel()

                def reclassify(ps):
                    return cl.classify_embedded(ps, tax, delta=delta, model=embedded)
            else:
                async def reclassify(ps):
                    return (await cl.classify_chat(ps, models[classifier], tax, delta=delta, cache=cc))[0]
            try:
                return await gen.expand(prompts, models[generator], tax, reclassify,
                                        target_per_domain=target_per_domain, max_new=max_new, seed=seed, cache=cc)
            finally:
                await _close_all(models)

    new, rep = asyncio.run(run())
    write_prompts(out, prompts + new)
    out.with_name(out.name + ".report.json").write_text(_json.dumps(rep.__dict__, indent=2))
    console.print(f"wrote {len(prompts) + len(new)} prompts to {out} ({len(new)} new, "
                  f"{sum(rep.generated.values())} written by the generator)")


@app.command()
def respond(
    input: Annotated[Path, typer.Option("--input", "-i", help="Deduplicated prompts with domains.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Candidates (JSONL): one aligned and one misaligned.")],
    generator: Annotated[list[str], typer.Option(help="Response generator (repeatable; balanced, seeded).")],
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    temperature: Annotated[float, typer.Option()] = 0.7,
    max_tokens: Annotated[int, typer.Option()] = 512,
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: Annotated[int, typer.Option(min=1)] = 32, cache: CacheOpt = None, taxonomy: TaxOpt = None,
) -> None:
    """Stage I step 4: an aligned and a misaligned candidate response for every prompt."""
    import asyncio

    from misalign.build import generate as gen
    from misalign.io import load_prompts, write_rows
    from misalign.models import CallCache

    prompts, _ = load_prompts(input, taxonomy=_taxonomy(taxonomy))
    models = _step_models(generator, base_url, api_key_env, max_concurrency)

    async def run():
        with CallCache(cache or out.with_name(out.name + ".cache.sqlite")) as cc:
            try:
                return await gen.respond(prompts, models, seed=seed, temperature=temperature, max_tokens=max_tokens,
                                         cache=cc)
            finally:
                await _close_all(models)

    cands = asyncio.run(run())
    write_rows(out, (gen.candidate_to_row(c) for c in cands))
    failed = sum(bool(c.errors) for c in cands)
    note = f"; {failed} with a failed generation" if failed else ""
    console.print(f"wrote {len(cands)} candidates to {out}{note}")


@app.command("filter")
def filter_cmd(
    input: Annotated[Path, typer.Option("--input", "-i", help="Candidates from `misalign respond`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Accepted paired items (our schema).")],
    judge: Annotated[str, typer.Option(help="Judge model; must not be one of the generators.")],
    generator: Annotated[list[str], typer.Option(help="Generators that regenerate rejected sides.")],
    max_rounds: Annotated[int, typer.Option(min=0, help="Feedback-guided regeneration rounds.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    max_concurrency: Annotated[int, typer.Option(min=1)] = 32, cache: CacheOpt = None,
) -> None:
    """Stage I step 5: two-stage rejection sampling; writes accepted items and a report of what was dropped."""
    import asyncio
    import json as _json

    from misalign.build import generate as gen
    from misalign.io import iter_rows, write_dataset

    cands = [gen.candidate_from_row(row) for _, row in iter_rows(input)]
    models = _step_models([*generator, judge], base_url, api_key_env, max_concurrency)

    async def run():
        from misalign.models import CallCache

        with CallCache(cache or out.with_name(out.name + ".cache.sqlite")) as cc:
            try:
                return await gen.reject_sample(cands, models[judge], {g: models[g] for g in generator},
                                               max_rounds=max_rounds, seed=seed, cache=cc)
            finally:
                await _close_all(models)

    items, rep = asyncio.run(run())
    write_dataset(out, items)
    out.with_name(out.name + ".report.json").write_text(_json.dumps(rep.__dict__, indent=2))
    console.print(f"wrote {len(items)} items to {out}: {rep.accepted_first} accepted at once, "
                  f"{rep.accepted_after_feedback} after feedback, {rep.dropped} dropped")


@app.command()
def build(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML build config.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Prompt pool.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Build directory.")] = None,
    generator: Annotated[list[str] | None, typer.Option("--generator", help="Response generator (repeatable).")]
    = None,
    judge: Annotated[str | None, typer.Option(help="Judge for rejection sampling.")] = None,
    classifier: Annotated[str | None, typer.Option(help="'embedded' (default) or a chat model.")] = None,
    target_per_domain: Annotated[int | None, typer.Option(help="Expand domains below this count.")] = None,
    max_new: Annotated[int | None, typer.Option(help="Budget of new prompts.")] = None,
    tau: Annotated[int | None, typer.Option(help="SimHash near-duplicate distance.")] = None,
    max_rounds: Annotated[int | None, typer.Option(help="Feedback rounds in rejection sampling.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N prompts.")] = None,
    base_url: BaseUrlOpt = None,
    taxonomy: TaxOpt = None,
) -> None:
    """Stage I end to end: classify, expand, dedup, respond, filter, split; resumes where it stopped."""
    from misalign.build.pipeline import BuildConfig, run_build

    flags = {"input": input, "out": out, "generators": generator, "judge": judge, "classifier": classifier,
             "target_per_domain": target_per_domain, "max_new": max_new, "tau": tau, "max_rounds": max_rounds,
             "seed": seed, "limit": limit, "base_urls": base_url}
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}
    try:
        cfg = BuildConfig.from_file(config, **flags) if config else BuildConfig.model_validate(flags)
    except ValueError as exc:
        error(exc)
        raise typer.Exit(2) from None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), TextColumn("{task.completed} calls"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def step_progress(step: str):
            def tick(_i: int, _c: object) -> None:
                if step not in tasks:
                    tasks[step] = bar.add_task(step, total=None)
                bar.advance(tasks[step])  # type: ignore[arg-type]
            return tick

        manifest = run_build(cfg, taxonomy=_taxonomy(taxonomy), say=console.print, progress=step_progress)
    console.print(f"build directory: {cfg.out} ({manifest['items']} items)")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories written by `misalign eval`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """A self-contained HTML report over one or more runs (leaderboard, plots, comparisons, reliability)."""
    from misalign.report import write_report

    write_report(run_dirs, out)
    console.print(f"wrote {out}")
