"""Stage I commands: ``classify``, ``expand``, ``dedup``, ``respond``, ``filter`` and ``build``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from misalign.cli import (
    BaseUrlOpt,
    ConcurrencyOpt,
    ConnectWaitOpt,
    EngineOpt,
    KeyEnvOpt,
    MapOpt,
    RayAddressOpt,
    RayShardsOpt,
    RayWorkersOpt,
    RejectsOpt,
    RetriesOpt,
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
    load_taxonomy,
    max_tokens_option,
    parse_mapping,
    ray_settings,
)

if TYPE_CHECKING:
    from misalign.build.expand import ExpandReport
    from misalign.build.filter import FilterReport
    from misalign.build.respond import Sampling
    from misalign.models import ModelPool
    from misalign.records import Prompt
    from misalign.taxonomy import Taxonomy

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'embedded' or a chat model string.")]
CacheOpt = Annotated[Path | None, typer.Option(help="SQLite call cache (default: next to --out).")]
TYPES_HELP = ("Also give each prompt a semantic type (object, attribute or relation; MisAlign-Profile): a chat "
              "classifier asks one more question per prompt, the embedded one needs a type head in its shipped head.")
PER_GENERATOR_HELP = ("Every generator writes both sides of every prompt (one candidate per prompt and generator, "
                      "id <prompt id>~<generator>), as MisAlign-Profile does, instead of one balanced generator per "
                      "prompt.")


@app.command()
def classify(
    input: Annotated[Path, typer.Option("--input", "-i", help="Prompt file (a prompt column; id optional), or a "
                                        "DICES CSV (one prompt per conversation, safety domains only, ratings and "
                                        "demographics kept in meta).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file (Parquet keeps probabilities compact).")],
    model: ModelOpt = "embedded",
    encoder: Annotated[str, typer.Option(help="Embedded encoder: minilm (better) or wordllama (~50x faster).")]
    = "minilm",
    delta: Annotated[float, typer.Option(help="Assign domains with p >= delta.")] = 0.5,
    semantic_types: Annotated[bool, typer.Option("--semantic-types/--no-semantic-types", help=TYPES_HELP)] = False,
    max_tokens: Annotated[int | None, max_tokens_option("400, the classification template's")] = None,
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY", max_concurrency: ConcurrencyOpt = 32,
    timeout: TimeoutOpt = 120.0, max_retries: RetriesOpt = 5, connect_wait: ConnectWaitOpt = 120.0,
    stream: StreamOpt = False,
    cache: CacheOpt = None,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64, shard_store: ShardStoreOpt = None,
) -> None:
    """Stage I step 1: a probability for every domain of every prompt; domains with p >= delta assigned."""
    check_engine(engine)
    from dataclasses import replace

    from misalign.build.classify import ChatClassifier, get_classifier
    from misalign.build.session import run_with_models
    from misalign.demo.dices import is_dices, safety_only
    from misalign.io import write_prompts, write_rows
    from misalign.taxonomy import DIMENSIONS

    tax = load_taxonomy(taxonomy)
    prompts = _load_pool(input, tax, mapping, skip_bad, rejects)  # before any model loads: bad input fails fast
    pool = _pool(base_url, api_key_env, max_concurrency, timeout, max_retries, connect_wait, stream)
    classifier = get_classifier(model, tax, pool=pool, delta=delta, encoder=encoder, semantic_types=semantic_types)
    if max_tokens and isinstance(classifier, ChatClassifier):  # part of each request, so of its cache key
        classifier.PARAMS = replace(classifier.PARAMS, max_tokens=max_tokens)
    cache_path = _cache_path(out, cache) if classifier.template is not None else None  # no model calls, no cache
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"classifying with {classifier.name}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task, done = bar.add_task("classify", total=len(prompts)), set()

        def tick(i: int, _answer: object) -> None:
            done.add(i)  # a chat classifier may answer a prompt twice (a repair)
            bar.update(task, completed=len(done))

        if engine == "ray":  # shard outputs and caches in <out>.ray/shards
            from misalign.engines.raydata import ray_classify

            settings = {"classifier": model, "delta": delta, "encoder": encoder, "semantic_types": semantic_types,
                        **({"max_tokens": max_tokens} if max_tokens else {})}
            result = ray_classify(prompts, settings, tax, pool.endpoint,
                                  ray_settings(ray_address, ray_workers, ray_shards, shard_store),
                                  out.with_name(out.name + ".ray"))
        else:
            result = run_with_models(lambda cc: classifier.classify(prompts, cache=cc, on_result=tick), pool=pool,
                                     cache_path=cache_path)
    classified = result.prompts
    if is_dices(input):  # Demo-SafetyBench: DICES conversations go into the 14 safety domains only
        classified = [safety_only(p) for p in classified]
    n = write_prompts(out, classified)
    if result.failures:
        fail_path = out.with_name(out.name + ".failures.jsonl")
        write_rows(fail_path, result.failures)
        err_console.print(f"[yellow]{len(result.failures)} prompt(s) could not be classified: {fail_path}[/]")
    assigned = {d: sum(bool(p.domains and p.domains.get(d)) for p in classified) for d in DIMENSIONS}
    types = ""
    if semantic_types:
        from collections import Counter

        types = f"; semantic types: {dict(Counter(p.semantic_type for p in result.prompts if p.semantic_type))}"
    console.print(f"wrote {n} prompts to {out}; prompts with a domain: {assigned}{types}")


@app.command()
def dedup(
    input: Annotated[Path, typer.Option("--input", "-i", help="Prompt file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Kept prompts.")],
    dropped: Annotated[Path, typer.Option(help="Dropped near-duplicates, each with duplicate_of.")],
    tau: Annotated[int, typer.Option(min=0, max=64, help="Hamming distance for near-duplicates.")] = 10,
    mapping: MapOpt = None, skip_bad: SkipOpt = False, rejects: RejectsOpt = None, taxonomy: TaxOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64,
) -> None:
    """Stage I step 3: drop near-duplicate prompts (64-bit SimHash, Hamming distance <= tau; first kept)."""
    from misalign.build.dedup import dedup_prompts
    from misalign.io import write_prompts

    check_engine(engine)
    prompts = _load_pool(input, load_taxonomy(taxonomy), mapping, skip_bad, rejects)
    fps = None
    if engine == "ray":  # fingerprints on Ray Data tasks; the near-duplicate search needs them all, here
        from misalign.engines.raydata import ray_fingerprints

        fps = ray_fingerprints([p.prompt for p in prompts], ray_settings(ray_address, ray_workers, ray_shards))
    kept, gone = dedup_prompts(prompts, tau, fps)
    write_prompts(out, kept)
    write_prompts(dropped, gone)
    console.print(f"kept {len(kept)}, dropped {len(gone)} near-duplicates (tau={tau}) of {len(prompts)}")


# -- what the step commands share ----------------------------------------------------------------------------

def _load_pool(input: Path, tax: Taxonomy, mapping: list[str] | None, skip_bad: bool, rejects: Path | None
               ) -> list[Prompt]:
    """The prompts of ``input`` read with the shared load options; rows skipped with ``--skip-bad`` are counted. A
    DICES file gives one prompt per conversation, its ratings and raters' demographics in ``meta["dices"]``."""
    from misalign.demo.dices import is_dices, load_dices
    from misalign.io import load_prompts, rejects_file

    if is_dices(input):
        return load_dices(input).prompts()

    prompts, skipped = load_prompts(input, taxonomy=tax, mapping=parse_mapping(mapping), skip_bad=skip_bad,
                                    rejects=rejects)
    if skipped:
        err_console.print(f"[yellow]{skipped} malformed row(s) skipped, written to {rejects_file(input, rejects)}[/]")
    return prompts


def _pool(base_url: list[str] | None, api_key_env: str, max_concurrency: int, timeout: float,
          max_retries: int, connect_wait: float, stream: bool) -> ModelPool:
    """The models of one step command, reached through the endpoint its options describe."""
    from misalign.models import ModelPool

    return ModelPool(endpoint_of(base_url, api_key_env, max_concurrency, timeout=timeout, max_retries=max_retries,
                                 connect_wait=connect_wait, stream=stream))


def _cache_path(out: Path, cache: Path | None) -> Path:
    """``--cache``, else ``<out>.cache.sqlite`` next to the output."""
    return cache or out.with_name(out.name + ".cache.sqlite")


def _sampling_settings(sampling: Sampling) -> dict[str, Any]:
    """A :class:`~misalign.build.respond.Sampling` as the settings that key Ray shards."""
    return {"seed": sampling.seed, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens}


def _write_report(out: Path, report: ExpandReport | FilterReport) -> None:
    """A step's report as ``<out>.report.json``."""
    from dataclasses import asdict

    out.with_name(out.name + ".report.json").write_text(json.dumps(asdict(report), indent=2))


@app.command()
def expand(
    input: Annotated[Path, typer.Option("--input", "-i", help="Classified prompts (from `misalign classify`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The prompts plus the new ones.")],
    generator: Annotated[str, typer.Option(help="Chat model that writes new prompts.")],
    target_per_domain: Annotated[int, typer.Option(min=1, help="Domains below this count are expanded (required, as "
                                                    "in `misalign build`, where it is off unless given).")],
    max_new: Annotated[int, typer.Option(min=0, help="Budget of new prompts.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    delta: Annotated[float, typer.Option(help="Re-classification threshold.")] = 0.5,
    classifier: Annotated[str, typer.Option(help="Re-classifies new prompts: 'embedded' or a chat model.")]
    = "embedded",
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY", max_concurrency: ConcurrencyOpt = 32,
    timeout: TimeoutOpt = 120.0, max_retries: RetriesOpt = 5, connect_wait: ConnectWaitOpt = 120.0,
    stream: StreamOpt = False,
    cache: CacheOpt = None, taxonomy: TaxOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64, shard_store: ShardStoreOpt = None,
) -> None:
    """Stage I step 2: new prompts for low-resource domains, kept only if re-classified into their domain."""
    from misalign.build.classify import get_classifier
    from misalign.build.expand import expand as expand_prompts
    from misalign.build.session import run_with_models
    from misalign.io import load_prompts, write_prompts

    check_engine(engine)
    tax = load_taxonomy(taxonomy)
    prompts, _ = load_prompts(input, taxonomy=tax)
    pool = _pool(base_url, api_key_env, max_concurrency, timeout, max_retries, connect_wait, stream)
    writer = pool.get(generator)
    reclassifier = get_classifier(classifier, tax, pool=pool, delta=delta)
    hooks: dict[str, Any] = {}
    if engine == "ray":  # each round's calls on Ray; shard outputs and caches in <out>.ray/shards
        from misalign.engines.rayexpand import ray_round_hooks

        hooks = ray_round_hooks(generator, {"classifier": classifier, "delta": delta, "encoder": "minilm",
                                            "semantic_types": False}, tax, pool.endpoint,
                                ray_settings(ray_address, ray_workers, ray_shards, shard_store),
                                out.with_name(out.name + ".ray"))
    expansion = run_with_models(
        lambda cc: expand_prompts(prompts, writer, tax, reclassifier, target_per_domain=target_per_domain,
                                  max_new=max_new, seed=seed, cache=cc, **hooks),
        pool=pool, cache_path=None if hooks else _cache_path(out, cache))  # on Ray, every call in a shard's cache
    write_prompts(out, prompts + expansion.prompts)
    _write_report(out, expansion.report)
    console.print(f"wrote {len(prompts) + len(expansion.prompts)} prompts to {out} ({len(expansion.prompts)} new, "
                  f"{sum(expansion.report.generated.values())} written by the generator)")


@app.command()
def respond(
    input: Annotated[Path, typer.Option("--input", "-i", help="Deduplicated prompts with domains.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Candidates (JSONL): one aligned and one misaligned.")],
    generator: Annotated[list[str], typer.Option(help="Response generator (repeatable; balanced, seeded; or "
                                                  "every one, --per-generator).")],
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens a chat model may generate per call.")] = 512,
    per_generator: Annotated[bool, typer.Option("--per-generator/--no-per-generator", help=PER_GENERATOR_HELP)]
    = False,
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY", max_concurrency: ConcurrencyOpt = 32,
    timeout: TimeoutOpt = 120.0, max_retries: RetriesOpt = 5, connect_wait: ConnectWaitOpt = 120.0,
    stream: StreamOpt = False,
    cache: CacheOpt = None, taxonomy: TaxOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64, shard_store: ShardStoreOpt = None,
) -> None:
    """Stage I step 4: an aligned and a misaligned candidate response for every prompt (and generator)."""
    from misalign.build.respond import Sampling, candidate_to_row, plan_candidates
    from misalign.build.respond import respond as respond_to
    from misalign.build.session import run_with_models
    from misalign.io import load_prompts, write_rows

    check_engine(engine)
    prompts, _ = load_prompts(input, taxonomy=load_taxonomy(taxonomy))
    pool = _pool(base_url, api_key_env, max_concurrency, timeout, max_retries, connect_wait, stream)
    sampling = Sampling(seed=seed, temperature=temperature, max_tokens=max_tokens)
    if engine == "ray":  # shard outputs and caches in <out>.ray/shards
        from misalign.engines.raybuild import ray_respond_and_filter

        cands = plan_candidates(prompts, generator, seed=seed, per_generator=per_generator)
        settings = {"phase": "respond", "generators": generator, "judge": None, "per_generator": per_generator,
                    "max_rounds": 0, **_sampling_settings(sampling)}
        ray_respond_and_filter(cands, settings, pool.endpoint,
                               ray_settings(ray_address, ray_workers, ray_shards, shard_store),
                               out.with_name(out.name + ".ray"))
    else:
        generators = {g: pool.get(g) for g in generator}
        cands = run_with_models(lambda cc: respond_to(prompts, generators, sampling=sampling, cache=cc,
                                                      per_generator=per_generator),
                                pool=pool, cache_path=_cache_path(out, cache))
    write_rows(out, (candidate_to_row(c) for c in cands))
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
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Most tokens a generator may write "
                          "per regenerated response (default: 512); the judge's checks use 300, or this if "
                          "smaller.")] = None,
    base_url: BaseUrlOpt = None, api_key_env: KeyEnvOpt = "OPENAI_API_KEY", max_concurrency: ConcurrencyOpt = 32,
    timeout: TimeoutOpt = 120.0, max_retries: RetriesOpt = 5, connect_wait: ConnectWaitOpt = 120.0,
    stream: StreamOpt = False,
    cache: CacheOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64, shard_store: ShardStoreOpt = None,
) -> None:
    """Stage I step 5: two-stage rejection sampling; writes accepted items and a report of what was dropped."""
    from misalign.build.filter import accept, check_judge, reject_sample
    from misalign.build.respond import Sampling, candidate_from_row
    from misalign.build.session import run_with_models
    from misalign.io import DataError, read_rows, write_dataset

    check_engine(engine)
    cands = [candidate_from_row(row) for _, row in read_rows(input)]
    if not cands:
        raise DataError(input, None, None, "no rows")
    check_judge(judge, generator)
    pool = _pool(base_url, api_key_env, max_concurrency, timeout, max_retries, connect_wait, stream)
    sampling = Sampling(seed=seed, max_tokens=max_tokens or Sampling.max_tokens)
    if engine == "ray":  # shard outputs and caches in <out>.ray/shards
        from misalign.engines.raybuild import ray_respond_and_filter

        settings = {"phase": "filter", "generators": generator, "judge": judge, "max_rounds": max_rounds,
                    **_sampling_settings(sampling)}
        items, report = accept(cands, ray_respond_and_filter(
            cands, settings, pool.endpoint, ray_settings(ray_address, ray_workers, ray_shards, shard_store),
            out.with_name(out.name + ".ray")))
    else:
        generators = {g: pool.get(g) for g in generator}
        judge_model = pool.get(judge)
        items, report = run_with_models(
            lambda cc: reject_sample(cands, judge_model, generators, max_rounds=max_rounds, sampling=sampling,
                                     cache=cc),
            pool=pool, cache_path=_cache_path(out, cache))
    write_dataset(out, items)
    _write_report(out, report)
    console.print(f"wrote {len(items)} items to {out}: {report.accepted_first} accepted at once, "
                  f"{report.accepted_after_feedback} after feedback, {report.dropped} dropped")


@app.command()
def build(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or YAML build config.")] = None,
    input: Annotated[Path | None, typer.Option("--input", "-i", help="Prompt pool.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Build directory.")] = None,
    generator: Annotated[list[str] | None, typer.Option("--generator", help="Response generator (repeatable).")]
    = None,
    judge: Annotated[str | None, typer.Option(help="Judge for rejection sampling.")] = None,
    classifier: Annotated[str | None, typer.Option(help="'embedded' (default) or a chat model.")] = None,
    semantic_types: Annotated[bool | None, typer.Option("--semantic-types/--no-semantic-types", help=TYPES_HELP)]
    = None,
    per_generator: Annotated[bool | None, typer.Option("--per-generator/--no-per-generator",
                                                       help=PER_GENERATOR_HELP)] = None,
    target_per_domain: Annotated[int | None, typer.Option(help="Expand domains below this count (default 0: no "
                                                          "expansion, as `misalign expand` needs it given).")] = None,
    max_new: Annotated[int | None, typer.Option(help="Budget of new prompts.")] = None,
    tau: Annotated[int | None, typer.Option(help="SimHash near-duplicate distance.")] = None,
    max_rounds: Annotated[int | None, typer.Option(help="Feedback rounds in rejection sampling.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Most tokens a generator may write "
                          "per candidate response (default: 512); the judge's checks use 300, or this if "
                          "smaller.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N prompts.")] = None,
    base_url: BaseUrlOpt = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key ('none' for "
                                                    "no key).")] = None,
    max_concurrency: Annotated[int | None, typer.Option(min=1, help="Requests in flight per model.")] = None,
    timeout: Annotated[float | None, typer.Option(min=0.1, help="Seconds one request attempt may take.")] = None,
    max_retries: Annotated[int | None, typer.Option(min=0, help="Retries of a failed request.")] = None,
    connect_wait: Annotated[float | None, typer.Option(min=0, help="Seconds to keep trying a server that refuses "
                                                       "connections (a restart).")] = None,
    stream: Annotated[bool | None, typer.Option("--stream/--no-stream", help="Stream answers, so a server stops "
                                                "generating a request we gave up on (for slow local servers).")]
    = None,
    taxonomy: TaxOpt = None,
    engine: EngineOpt = "local", ray_address: RayAddressOpt = None, ray_workers: RayWorkersOpt = 2,
    ray_shards: RayShardsOpt = 64, shard_store: ShardStoreOpt = None,
) -> None:
    """Stage I end to end: classify, expand, dedup, respond, filter, split; resumes where it stopped."""
    from misalign.build.pipeline import BuildConfig, run_build

    check_engine(engine)
    flags = {"input": input, "out": out, "generators": generator, "judge": judge, "classifier": classifier,
             "target_per_domain": target_per_domain, "max_new": max_new, "tau": tau, "max_rounds": max_rounds,
             "seed": seed, "max_tokens": max_tokens, "limit": limit, "base_urls": base_url, "api_key_env": api_key_env,
             "max_concurrency": max_concurrency, "timeout": timeout, "max_retries": max_retries,
             "connect_wait": connect_wait, "stream": stream, "semantic_types": semantic_types,
             "per_generator": per_generator}
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

        ray = ray_settings(ray_address, ray_workers, ray_shards, shard_store) if engine == "ray" else None
        manifest = run_build(cfg, taxonomy=load_taxonomy(taxonomy), say=console.print, progress=step_progress,
                             ray=ray)
    console.print(f"build directory: {cfg.out} ({manifest['items']} items)")


