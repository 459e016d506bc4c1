"""``misalign build``: chain the Stage I steps with one config, resumable step by step.

Each step is one short function below calling the same step code as its command (``misalign classify``,
``expand``, ``dedup``, ``respond``, ``filter``); :func:`_run` reads as the sequence of steps. Classify, expand and
dedup are skipped on a re-run when their input files and settings are unchanged (``steps.json``); respond and
filter always run, and every model call goes through ``cache.sqlite`` (with ``--engine ray``, each shard's cache
under ``shards/``, and a finished shard is not run again), so a re-run of a finished build makes no model calls and
writes the same bytes. ``--engine ray`` runs classify, each expansion round's generator calls (and a chat
classifier's calls; the rounds, which share a budget, stay in the driver), the dedup fingerprints (the
near-duplicate search stays in the driver), respond and filter on Ray Data, writing the same bytes as the local
engine. The build directory holds::

    01_classified.parquet        classified prompts (probabilities and domains; semantic types when asked for)
    classify_failures.jsonl      prompts a chat classifier could not classify (only when there are any)
    before_generation_count.csv  prompts per (dimension, domain) before expansion
    02_expanded.parquet          the classified prompts plus the new ones kept (a copy when expansion is skipped)
    expand_report.json           requested, generated and kept per domain (when expansion ran)
    after_generation_count.csv   prompts per (dimension, domain) after expansion
    03_kept.parquet              deduplicated prompts, each with its SimHash fingerprint
    03_dropped.parquet           the near-duplicates dropped, each with ``duplicate_of``
    04_candidates.jsonl          every candidate pair with its generator, rounds and judge verdicts
    filter_report.json           counts of rejection sampling (accepted, dropped by reason and domain)
    dataset.jsonl                the accepted items with their train/validation/test split
    build_statistics.csv         per (dimension, domain) counts through the steps (MisAlign-Profile's table)
    build_manifest.json          config (URLs redacted), taxonomy version, templates, skipped steps, counts
    steps.json                   which inputs and settings each finished step used
    cache.sqlite                 every model call
    shards/                      --engine ray: each shard's output and call cache (classify-*, expand-*, respond-*)

The candidates, filter report and dataset are written only when generators and a judge are given.

``build_statistics.csv`` has MisAlign-Profile's README columns, one row per (dimension, domain) of the taxonomy. The
authors' definitions are not public; ours: ``Cls.`` prompts classified into the domain (before expansion),
``Exp.`` prompts after expansion, ``Dedup.`` prompts kept after deduplication, ``Gen.`` candidate pairs generated
for its prompts, ``CF aligned`` / ``CF misaligned`` candidates whose aligned / misaligned side passed the critique
filter (within the feedback rounds), ``FGR`` final accepted pairs / ``Gen.`` (empty when ``Gen.`` is 0). The
columns after ``Dedup.`` are empty when respond and filter were skipped.

With ``per_generator`` every generator writes both sides of every prompt (MisAlign-Profile: two generators, four
responses per prompt); item ids are then ``<prompt id>~<generator>`` and the items of one prompt share a split.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from misalign.build.classify import Classifier, get_classifier
from misalign.build.dedup import dedup_prompts
from misalign.build.expand import TEMPLATE as EXPAND_TEMPLATE
from misalign.build.expand import domain_counts, expand
from misalign.build.filter import TEMPLATE as CHECK_TEMPLATE
from misalign.build.filter import FilterReport, accept, respond_and_filter
from misalign.build.respond import KINDS, Candidate, Sampling, candidate_to_row, plan_candidates
from misalign.build.respond import TEMPLATE as RESPOND_TEMPLATE
from misalign.build.session import run_with_models
from misalign.build.split import prompt_group, split_items
from misalign.errors import ConfigError
from misalign.io import load_prompts, write_dataset, write_prompts, write_rows
from misalign.models import CallCache, Endpoint, ModelPool, parse_base_urls, redact_base_urls
from misalign.records import SPLITS, Item, Prompt
from misalign.taxonomy import Taxonomy
from misalign.templates import load_template

CLASSIFIED = "01_classified.parquet"
EXPANDED = "02_expanded.parquet"
KEPT = "03_kept.parquet"
DROPPED = "03_dropped.parquet"
STATISTICS = "build_statistics.csv"
STATISTICS_COLUMNS = ("Cls.", "Exp.", "Dedup.", "Gen.", "CF aligned", "CF misaligned", "FGR")
"""The columns of ``build_statistics.csv`` after ``dimension`` and ``domain``."""
OFF_UNLESS_ON = ("stream", "per_generator", "semantic_types")
"""Config keys left out of the manifest while off, so manifests of builds without them keep their bytes."""
# The config keys that decide each skippable step's output (its freshness key hashes them with its input file).
CLASSIFY_SETTINGS = ("classifier", "encoder", "delta", "limit")
EXPAND_SETTINGS = ("target_per_domain", "max_new", "seed", "expander", "generators")
DEDUP_SETTINGS = ("tau",)
RESPOND_SETTINGS = ("generators", "judge", "per_generator", "max_rounds", "seed", "temperature", "top_p", "max_tokens")
"""What decides respond's and filter's answers (the key of a Ray shard's output)."""


class BuildConfig(BaseModel):
    """Settings of a build (a TOML or YAML file, or command-line flags)."""

    model_config = ConfigDict(extra="forbid")

    input: Path = Field(description="Prompt pool (JSONL, CSV or Parquet with a prompt column).")
    out: Path = Field(description="Build directory.")
    seed: int = 0
    classifier: str = Field("embedded", description="'embedded' or a chat model string.")
    encoder: str = Field("minilm", description="Embedded encoder: minilm or wordllama.")
    delta: float = Field(0.5, ge=0, le=1, description="Assign domains with p >= delta.")
    semantic_types: bool = Field(False, description="Also give each prompt a semantic type (object, attribute, "
                                 "relation; MisAlign-Profile).")
    target_per_domain: int = Field(0, ge=0, description="Expand domains below this count (0: no expansion).")
    max_new: int = Field(1000, ge=0, description="Budget of new prompts.")
    expander: str | None = Field(None, description="Generator for expansion (default: the first generator).")
    tau: int = Field(10, ge=0, le=64, description="SimHash Hamming distance for near-duplicates.")
    generators: list[str] = Field(default_factory=list, description="Response generators.")
    per_generator: bool = Field(False, description="Every generator writes both sides of every prompt (one item "
                                "per prompt and generator) instead of one balanced generator per prompt.")
    judge: str | None = Field(None, description="Judge for rejection sampling; must differ from generators.")
    max_rounds: int = Field(2, ge=0, description="Feedback-guided regeneration rounds.")
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    base_urls: list[str] | dict[str, str | list[str]] = Field(
        default_factory=list, description="OpenAI-compatible servers: a list of URL (every model) and MODEL=URL "
        "(one model's) items, or a table model -> URL or list of URLs ('*': every other model).")
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(32, ge=1)
    timeout: float = Field(120.0, gt=0, description="Seconds one request attempt may take.")
    max_retries: int = Field(5, ge=0, description="Retries of a failed request before it counts as failed.")
    connect_wait: float = Field(120.0, ge=0, description="Seconds to keep trying servers that refuse connections "
                                "(a restart) before a request counts as failed.")
    stream: bool = Field(False, description="Stream answers, so a server stops generating a request we gave up on "
                         "(for slow local servers).")
    limit: int | None = Field(None, ge=1, description="Only the first N prompts.")

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> BuildConfig:
        """Load and validate a TOML or YAML config; errors name the file and the key."""
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = tomllib.loads(text)
        except Exception as exc:
            raise ValueError(f"{path}: cannot parse config: {exc}") from exc
        data.update({k: v for k, v in overrides.items() if v is not None})
        base = path.parent
        for key in ("input", "out"):
            if key in data and not Path(data[key]).is_absolute() and key not in overrides:
                data[key] = str(base / data[key])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{path}: key {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None

    @field_validator("base_urls")
    @classmethod
    def _check_base_urls(cls, urls: list[str] | dict[str, str | list[str]]) -> list[str] | dict[str, str | list[str]]:
        parse_base_urls(urls)  # a ConfigError (a ValueError) names the bad item
        return urls

    @field_serializer("base_urls")
    def _redact_base_urls(self, urls: list[str] | dict[str, str | list[str]]) -> list[str] | dict[str, object]:
        return redact_base_urls(urls)  # dumps (the manifest) never carry credentials

    @property
    def endpoint(self) -> Endpoint:
        """How to reach the chat models (each model on its own servers where ``base_urls`` names them)."""
        return Endpoint.with_urls(self.base_urls, api_key_env=self.api_key_env, max_concurrency=self.max_concurrency,
                                  timeout=self.timeout, max_retries=self.max_retries, connect_wait=self.connect_wait,
                                  stream=self.stream)

    @property
    def sampling(self) -> Sampling:
        """How candidate responses are sampled."""
        return Sampling(seed=self.seed, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)

    @property
    def expansion_generator(self) -> str | None:
        """The model that writes new prompts: ``expander``, else the first generator, else None."""
        return self.expander or (self.generators[0] if self.generators else None)


def _hash_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Steps:
    """Records which step produced which output from which input and settings, to skip finished steps."""

    def __init__(self, out: Path) -> None:
        self.path = out / "steps.json"
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def key(self, inputs: list[Path], settings: dict[str, Any]) -> str:
        """A hash of the input files' bytes and the settings that decide the step's output."""
        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for p in inputs:
            h.update(_hash_file(p).encode())
        return h.hexdigest()

    def fresh(self, name: str, key: str, outputs: list[Path]) -> bool:
        """Whether step ``name`` last finished with this key and its outputs are all still there."""
        return self.done.get(name) == key and all(p.exists() for p in outputs)

    def mark(self, name: str, key: str) -> None:
        """Record that step ``name`` finished with ``key`` (written atomically)."""
        self.done[name] = key
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2))
        tmp.replace(self.path)


Progress = Callable[[str], Callable[[int, Any], None]]
"""``progress(step)`` gives the per-call callback for one step's model calls."""


def run_build(cfg: BuildConfig, *, taxonomy: Taxonomy | None = None, say: Callable[[str], None] = print,
              progress: Progress | None = None, ray: Any = None) -> dict[str, Any]:
    """Run every step that the config allows; return the build manifest.

    ``ray`` (:class:`~misalign.engines.raydata.RaySettings`) runs classify, each expansion round's calls, the dedup
    fingerprints, respond and filter on Ray Data (the same bytes; the expansion rounds run here)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    pool = ModelPool(cfg.endpoint)

    async def run(cache: CallCache | None) -> dict[str, Any]:
        build = _Build(cfg, taxonomy or Taxonomy.default(), pool, cache, Steps(cfg.out), say,
                       progress or (lambda step: lambda i, c: None), ray=ray)
        return await _run(build)

    return run_with_models(run, pool=pool, cache_path=cfg.out / "cache.sqlite")


@dataclass
class _Build:
    """One build in progress: its config, models, cache and what the manifest will say."""

    cfg: BuildConfig
    taxonomy: Taxonomy
    pool: ModelPool
    cache: CallCache | None
    steps: Steps
    say: Callable[[str], None]
    progress: Progress
    skipped: dict[str, str] = field(default_factory=dict)
    """Step -> why it was skipped."""
    templates: dict[str, dict[str, str]] = field(default_factory=dict)
    """Step -> the name and sha256 of the prompt template it used."""
    ray: Any = None
    """:class:`~misalign.engines.raydata.RaySettings` when classify, expand's rounds, dedup, respond and filter run
    on Ray Data."""
    _classifier: Classifier | None = None

    @property
    def out(self) -> Path:
        """The build directory."""
        return self.cfg.out

    def settings(self, *keys: str) -> dict[str, Any]:
        """The named config values, as they go into a step's freshness key."""
        dumped = self.cfg.model_dump(mode="json")
        return {k: dumped[k] for k in keys}

    def classifier(self) -> Classifier:
        """The build's classifier (classify and expand share it), made on first use."""
        if self._classifier is None:
            self._classifier = get_classifier(self.cfg.classifier, self.taxonomy, pool=self.pool,
                                              delta=self.cfg.delta, encoder=self.cfg.encoder,
                                              semantic_types=self.cfg.semantic_types)
        return self._classifier

    def type_settings(self) -> dict[str, Any]:
        """What semantic typing adds to a classifying step's freshness key: nothing while off (keys as before)."""
        if not self.cfg.semantic_types:
            return {}
        tpl = self.classifier().type_template
        return {"semantic_types": True, **({"type_template": tpl.ref} if tpl is not None else {})}


async def _run(b: _Build) -> dict[str, Any]:
    """The Stage I steps in order; each reads what the previous one wrote."""
    classified = await _classify(b)
    expanded = await _expand(b, classified)
    kept = _dedup(b, expanded)
    cands, items, report = await _respond_and_filter(b, kept)
    if items is not None:
        items = _split_and_publish(b, items)
    write_rows(b.out / STATISTICS, build_statistics(b.taxonomy, classified, expanded, kept, cands))
    manifest = _manifest(b, report, items, {"input": len(classified), "expanded": len(expanded), "kept": len(kept)})
    _write_json(b.out / "build_manifest.json", manifest)
    return manifest


async def _classify(b: _Build) -> list[Prompt]:
    """Step 1: classify the (first ``limit``) input prompts; write the count table before generation."""
    path = b.out / CLASSIFIED
    classifier = b.classifier()
    settings = {**b.settings(*CLASSIFY_SETTINGS), **b.type_settings()}
    if classifier.template is not None:  # a chat classifier: a new template version classifies again
        b.templates["classify"] = settings["template"] = classifier.template.ref
    if classifier.type_template is not None:
        b.templates["classify_type"] = classifier.type_template.ref
    key = b.steps.key([b.cfg.input], settings)
    if b.steps.fresh("classify", key, [path]):
        b.say("classify: up to date")
    else:
        prompts, _ = load_prompts(b.cfg.input, taxonomy=b.taxonomy)
        prompts = prompts[: b.cfg.limit] if b.cfg.limit else prompts
        b.say(f"classify: {len(prompts)} prompts with {b.cfg.classifier}")
        if b.ray is None:
            result = await classifier.classify(prompts, cache=b.cache)
        else:
            from misalign.engines.raydata import ray_classify

            result = ray_classify(prompts, b.settings("classifier", "delta", "encoder", "semantic_types"),
                                  b.taxonomy, b.cfg.endpoint, b.ray, b.out)
        _write_failures(b, result.failures)
        write_prompts(path, result.prompts)
        b.steps.mark("classify", key)
    classified, _ = load_prompts(path, taxonomy=b.taxonomy)
    _count_table(b.out / "before_generation_count.csv", classified, b.taxonomy)
    return classified


async def _expand(b: _Build, classified: list[Prompt]) -> list[Prompt]:
    """Step 2: new prompts for domains below the target (re-classified by the build's classifier)."""
    path = b.out / EXPANDED
    generator = b.cfg.expansion_generator
    key = b.steps.key([b.out / CLASSIFIED], {**b.settings(*EXPAND_SETTINGS),
                                              "template": load_template(EXPAND_TEMPLATE).ref, **b.type_settings()})
    skip = ("target_per_domain is 0" if not b.cfg.target_per_domain
            else "no generator given" if generator is None else None)
    if skip:
        b.skipped["expand"] = skip
        b.say(f"expand: skipped ({skip})")
        write_prompts(path, classified)
    elif b.steps.fresh("expand", key, [path]):
        b.say("expand: up to date")
    else:
        assert generator is not None
        hooks: dict[str, Any] = {}
        if b.ray is not None:  # each round's calls on Ray Data; the rounds here
            from misalign.engines.rayexpand import ray_round_hooks

            hooks = ray_round_hooks(generator, b.settings("classifier", "delta", "encoder", "semantic_types"),
                                    b.taxonomy, b.cfg.endpoint, b.ray, b.out)
        expansion = await expand(classified, b.pool.get(generator), b.taxonomy, b.classifier(),
                                 target_per_domain=b.cfg.target_per_domain, max_new=b.cfg.max_new, seed=b.cfg.seed,
                                 cache=b.cache, **hooks)
        _write_failures(b, expansion.classify_failures)
        b.say(f"expand: {len(expansion.prompts)} new prompts kept ({sum(expansion.report.generated.values())} "
              "written)")
        write_prompts(path, classified + expansion.prompts)
        _write_json(b.out / "expand_report.json", asdict(expansion.report))
        b.steps.mark("expand", key)
    if not skip:
        b.templates["expand"] = load_template(EXPAND_TEMPLATE).ref
    expanded, _ = load_prompts(path, taxonomy=b.taxonomy)
    _count_table(b.out / "after_generation_count.csv", expanded, b.taxonomy)
    return expanded


def _dedup(b: _Build, expanded: list[Prompt]) -> list[Prompt]:
    """Step 3: drop near-duplicates (SimHash, Hamming distance <= tau)."""
    kept_path, dropped_path = b.out / KEPT, b.out / DROPPED
    key = b.steps.key([b.out / EXPANDED], b.settings(*DEDUP_SETTINGS))
    if b.steps.fresh("dedup", key, [kept_path, dropped_path]):
        b.say("dedup: up to date")
    else:
        fps = None
        if b.ray is not None:
            from misalign.engines.raydata import ray_fingerprints

            fps = ray_fingerprints([p.prompt for p in expanded], b.ray)
        kept, dropped = dedup_prompts(expanded, b.cfg.tau, fps)
        write_prompts(kept_path, kept)
        write_prompts(dropped_path, dropped)
        b.say(f"dedup: kept {len(kept)}, dropped {len(dropped)} near-duplicates (tau={b.cfg.tau})")
        b.steps.mark("dedup", key)
    kept, _ = load_prompts(kept_path, taxonomy=b.taxonomy)
    return kept


async def _respond_and_filter(b: _Build, kept: list[Prompt]
                              ) -> tuple[list[Candidate] | None, list[Item] | None, FilterReport | None]:
    """Steps 4 and 5: candidates from the generators, then two-stage rejection sampling by the judge: here, or shard
    by shard on Ray Data (:mod:`misalign.engines.raybuild`), counted and written here in the same order.

    (None, None, None) when no generator is given (the build stops at the deduplicated prompts); an error without a
    judge.
    """
    if not b.cfg.generators:
        b.skipped["respond"] = b.skipped["filter"] = "no generator given"
        b.say("respond, filter: skipped (no generator given); the build stops at deduplicated prompts")
        return None, None, None
    if not b.cfg.judge:
        b.skipped["filter"] = "no judge given"
        raise ConfigError("a judge is needed to filter generated responses (--judge); none given")
    b.templates["respond"] = load_template(RESPOND_TEMPLATE).ref
    b.templates["filter"] = load_template(CHECK_TEMPLATE).ref
    cands = plan_candidates(kept, b.cfg.generators, seed=b.cfg.seed, per_generator=b.cfg.per_generator)
    if b.ray is None:
        sides = await respond_and_filter(cands, {g: b.pool.get(g) for g in b.cfg.generators}, b.pool.get(b.cfg.judge),
                                         max_rounds=b.cfg.max_rounds, sampling=b.cfg.sampling, cache=b.cache,
                                         on_respond=b.progress("respond"), on_filter=b.progress("filter"))
    else:
        from misalign.engines.raybuild import ray_respond_and_filter

        sides = ray_respond_and_filter(cands, b.settings(*RESPOND_SETTINGS), b.cfg.endpoint, b.ray, b.out)
    if b.cfg.per_generator:
        b.say(f"respond: {len(kept)} prompts x {len(b.cfg.generators)} generators x 2 candidates")
    else:
        b.say(f"respond: {len(cands)} prompts x 2 candidates")
    items, report = accept(cands, sides)
    write_rows(b.out / "04_candidates.jsonl", (candidate_to_row(c) for c in cands))
    _write_json(b.out / "filter_report.json", asdict(report))
    b.say(f"filter: {report.accepted_first} accepted at once, {report.accepted_after_feedback} after feedback, "
          f"{report.dropped} dropped")
    return cands, items, report


def _split_and_publish(b: _Build, items: list[Item]) -> list[Item]:
    """Step 6: a seeded, stratified split (in per-generator mode the items of one prompt share a split); the dataset
    written."""
    items = split_items(items, seed=b.cfg.seed, group=prompt_group if b.cfg.per_generator else None)
    write_dataset(b.out / "dataset.jsonl", items)
    return items


def _manifest(b: _Build, report: FilterReport | None, items: list[Item] | None,
              prompts: dict[str, int]) -> dict[str, Any]:
    """What the build did: config (without credentials in URLs), templates, skipped steps and counts."""
    config = b.cfg.model_dump(mode="json", exclude={k for k in OFF_UNLESS_ON if not getattr(b.cfg, k)})
    manifest: dict[str, Any] = {"config": config, "taxonomy": b.taxonomy.version, "templates": b.templates,
                                "skipped": b.skipped}
    if report is not None:
        manifest["filter"] = asdict(report)
    manifest["items"] = len(items) if items is not None else 0
    if items is not None:
        manifest["splits"] = {s: sum(i.split == s for i in items) for s in SPLITS}
    manifest["prompts"] = prompts
    return manifest


def _write_failures(b: _Build, failures: list[dict[str, Any]]) -> None:
    """Prompts the classifier could not classify, when there are any."""
    if failures:
        write_rows(b.out / "classify_failures.jsonl", failures)


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def _count_table(path: Path, prompts: list[Prompt], taxonomy: Taxonomy) -> None:
    """Prompts per (dimension, domain) as a CSV table."""
    counts = domain_counts(prompts, taxonomy)
    write_rows(path, ({"dimension": dim, "domain": name, "count": n} for (dim, name), n in counts.items()))


def build_statistics(taxonomy: Taxonomy, classified: list[Prompt], expanded: list[Prompt], kept: list[Prompt],
                     cands: list[Candidate] | None) -> list[dict[str, Any]]:
    """The rows of ``build_statistics.csv`` (definitions in the module docstring); ``cands`` None: respond and
    filter were skipped, their columns empty."""
    def passed(c: Candidate, kind: str) -> bool:
        return any(v["pass"] for v in c.verdicts[kind])

    columns = {"Cls.": classified, "Exp.": expanded, "Dedup.": kept}
    if cands is not None:
        columns |= {"Gen.": [c.prompt for c in cands],
                    "CF aligned": [c.prompt for c in cands if passed(c, "aligned")],
                    "CF misaligned": [c.prompt for c in cands if passed(c, "misaligned")],
                    "accepted": [c.prompt for c in cands if all(passed(c, k) for k in KINDS)]}
    counts = {name: domain_counts(prompts, taxonomy) for name, prompts in columns.items()}
    rows = []
    for dim, name in counts["Cls."]:
        row: dict[str, Any] = {"dimension": dim, "domain": name, **dict.fromkeys(STATISTICS_COLUMNS)}
        row.update({col: n[(dim, name)] for col, n in counts.items() if col in STATISTICS_COLUMNS})
        if cands is not None and row["Gen."]:
            row["FGR"] = round(counts["accepted"][(dim, name)] / row["Gen."], 4)
        rows.append(row)
    return rows
