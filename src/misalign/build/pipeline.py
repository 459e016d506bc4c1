"""``misalign build``: chain the Stage I steps with one config, resumable step by step.

Build directory layout (every file written atomically; a step whose output exists with the same input hash
and config is skipped on a re-run, and every model call goes through ``cache.sqlite``)::

    01_classified.parquet   02_expanded.parquet   03_kept.parquet   03_dropped.parquet
    04_candidates.jsonl     05_items.jsonl        dataset.jsonl     build_manifest.json
    before_generation_count.csv   after_generation_count.csv   filter_report.json   steps.json
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from misalign.records import Prompt
from misalign.taxonomy import Taxonomy


class BuildConfig(BaseModel):
    """Settings of a build (a TOML or YAML file, or command-line flags)."""

    model_config = ConfigDict(extra="forbid")

    input: Path = Field(description="Prompt pool (JSONL, CSV or Parquet with a prompt column).")
    out: Path = Field(description="Build directory.")
    seed: int = 0
    classifier: str = Field("embedded", description="'embedded' or a chat model string.")
    encoder: str = Field("minilm", description="Embedded encoder: minilm or wordllama.")
    delta: float = Field(0.5, ge=0, le=1, description="Assign domains with p >= delta.")
    target_per_domain: int = Field(0, ge=0, description="Expand domains below this count (0: no expansion).")
    max_new: int = Field(1000, ge=0, description="Budget of new prompts.")
    expander: str | None = Field(None, description="Generator for expansion (default: the first generator).")
    tau: int = Field(10, ge=0, le=64, description="SimHash Hamming distance for near-duplicates.")
    generators: list[str] = Field(default_factory=list, description="Response generators.")
    judge: str | None = Field(None, description="Judge for rejection sampling; must differ from generators.")
    max_rounds: int = Field(2, ge=0, description="Feedback-guided regeneration rounds.")
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    base_urls: list[str] = Field(default_factory=list, description="OpenAI-compatible servers.")
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(32, ge=1)
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


def _hash_file(path: Path) -> str:
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
        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        for p in inputs:
            h.update(_hash_file(p).encode())
        return h.hexdigest()

    def fresh(self, name: str, key: str, outputs: list[Path]) -> bool:
        return self.done.get(name) == key and all(p.exists() for p in outputs)

    def mark(self, name: str, key: str) -> None:
        self.done[name] = key
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2))
        tmp.replace(self.path)


Progress = Callable[[str], Callable[[int, Any], None]]
"""``progress(step)`` gives the per-call callback for one step's model calls."""


def run_build(cfg: BuildConfig, *, taxonomy: Taxonomy | None = None, say: Callable[[str], None] = print,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run every step that the config allows; return the build manifest."""
    return asyncio.run(_run(cfg, taxonomy or Taxonomy.default(), say, progress or (lambda step: lambda i, c: None)))


async def _run(cfg: BuildConfig, tax: Taxonomy, say: Callable[[str], None], progress: Progress) -> dict[str, Any]:
    from misalign.build import classify as cl
    from misalign.build import generate as gen
    from misalign.build.split import assign_splits
    from misalign.io import load_prompts, write_dataset, write_prompts, write_rows
    from misalign.models import CallCache, get_model

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out)
    cache = CallCache(out / "cache.sqlite")
    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    def model(name: str):
        if name not in models:
            models[name] = get_model(name, base_urls=cfg.base_urls, api_key_env=cfg.api_key_env,
                                     max_concurrency=cfg.max_concurrency)
        return models[name]

    embedded = None

    def classify_sync(prompts: list[Prompt]) -> list[Prompt]:
        nonlocal embedded
        if cfg.classifier == "embedded":
            from misalign.models.embedded import EmbeddedModel

            embedded = embedded or EmbeddedModel(encoder=cfg.encoder)
            return cl.classify_embedded(prompts, tax, delta=cfg.delta, model=embedded)
        raise RuntimeError("chat classification runs through classify_async")

    async def classify_any(prompts: list[Prompt]) -> list[Prompt]:
        if cfg.classifier == "embedded":
            return classify_sync(prompts)
        result, failures = await cl.classify_chat(prompts, model(cfg.classifier), tax, delta=cfg.delta, cache=cache)
        if failures:
            write_rows(out / "classify_failures.jsonl", failures)
        return result

    settings = cfg.model_dump(mode="json")
    try:
        # 1. classify
        p1 = out / "01_classified.parquet"
        k1 = steps.key([cfg.input], {k: settings[k] for k in ("classifier", "encoder", "delta", "limit")})
        if steps.fresh("classify", k1, [p1]):
            say("classify: up to date")
        else:
            prompts, _ = load_prompts(cfg.input, taxonomy=tax)
            prompts = prompts[: cfg.limit] if cfg.limit else prompts
            say(f"classify: {len(prompts)} prompts with {cfg.classifier}")
            write_prompts(p1, await classify_any(prompts))
            steps.mark("classify", k1)
        classified, _ = load_prompts(p1, taxonomy=tax)
        _count_table(out / "before_generation_count.csv", classified, tax)

        # 2. expand
        p2 = out / "02_expanded.parquet"
        expander = cfg.expander or (cfg.generators[0] if cfg.generators else None)
        k2 = steps.key([p1], {k: settings[k] for k in ("target_per_domain", "max_new", "seed", "expander",
                                                         "generators")})
        if cfg.target_per_domain and expander is None:
            skipped["expand"] = "no generator given"
        if not cfg.target_per_domain:
            skipped["expand"] = "target_per_domain is 0"
        if "expand" in skipped:
            say(f"expand: skipped ({skipped['expand']})")
            write_prompts(p2, classified)
        elif steps.fresh("expand", k2, [p2]):
            say("expand: up to date")
        else:
            new, rep = await gen.expand(classified, model(expander), tax,
                                        classify_sync if cfg.classifier == "embedded" else classify_any,
                                        target_per_domain=cfg.target_per_domain, max_new=cfg.max_new,
                                        seed=cfg.seed, cache=cache)
            say(f"expand: {len(new)} new prompts kept ({sum(rep.generated.values())} written)")
            write_prompts(p2, classified + new)
            (out / "expand_report.json").write_text(json.dumps(rep.__dict__, indent=2))
            steps.mark("expand", k2)
        expanded, _ = load_prompts(p2, taxonomy=tax)
        _count_table(out / "after_generation_count.csv", expanded, tax)

        # 3. dedup
        from misalign.build.simhash import dedup, fingerprints

        p3, p3d = out / "03_kept.parquet", out / "03_dropped.parquet"
        k3 = steps.key([p2], {"tau": cfg.tau})
        if steps.fresh("dedup", k3, [p3, p3d]):
            say("dedup: up to date")
        else:
            kept, dropped = dedup_prompts(expanded, cfg.tau, fingerprints, dedup)
            write_prompts(p3, kept)
            write_prompts(p3d, dropped)
            say(f"dedup: kept {len(kept)}, dropped {len(dropped)} near-duplicates (tau={cfg.tau})")
            steps.mark("dedup", k3)
        kept, _ = load_prompts(p3, taxonomy=tax)

        # 4-5. respond and filter
        manifest: dict[str, Any] = {"config": settings, "taxonomy": tax.version, "skipped": skipped}
        if not cfg.generators:
            skipped["respond"] = skipped["filter"] = "no generator given"
            say("respond, filter: skipped (no generator given); the build stops at deduplicated prompts")
            items = None
        elif not cfg.judge:
            skipped["filter"] = "no judge given"
            raise ValueError("a judge is needed to filter generated responses (--judge); none given")
        else:
            gens = {g: model(g) for g in cfg.generators}
            judge = model(cfg.judge)
            cands = await gen.respond(kept, gens, seed=cfg.seed, temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_tokens=cfg.max_tokens, cache=cache, on_result=progress("respond"))
            say(f"respond: {len(cands)} prompts x 2 candidates")
            items, rep = await gen.reject_sample(cands, judge, gens, max_rounds=cfg.max_rounds, seed=cfg.seed,
                                                 temperature=cfg.temperature, top_p=cfg.top_p,
                                                 max_tokens=cfg.max_tokens, cache=cache,
                                                 on_result=progress("filter"))
            write_rows(out / "04_candidates.jsonl", (gen.candidate_to_row(c) for c in cands))
            (out / "filter_report.json").write_text(json.dumps(rep.__dict__, indent=2))
            manifest["filter"] = rep.__dict__
            say(f"filter: {rep.accepted_first} accepted at once, {rep.accepted_after_feedback} after feedback, "
                f"{rep.dropped} dropped")

        # 6. split and publish
        if items is not None:
            for it, split in zip(items, assign_splits(items, seed=cfg.seed), strict=True):
                it.split = split  # type: ignore[assignment]
            write_dataset(out / "dataset.jsonl", items)
            manifest["items"] = len(items)
            manifest["splits"] = {s: sum(i.split == s for i in items) for s in ("train", "validation", "test")}
        else:
            manifest["items"] = 0
        manifest["prompts"] = {"input": len(classified), "expanded": len(expanded), "kept": len(kept)}
        tmp = out / "build_manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        tmp.replace(out / "build_manifest.json")
        return manifest
    finally:
        for m in models.values():
            await m.aclose()
        cache.close()


def dedup_prompts(prompts: list[Prompt], tau: int, fingerprints, dedup) -> tuple[list[Prompt], list[Prompt]]:
    """Split prompts into kept and dropped near-duplicates, each carrying its SimHash fingerprint."""
    fps = fingerprints([p.prompt for p in prompts])
    dup_of = dedup(fps, tau)
    kept, dropped = [], []
    for p, fp, d in zip(prompts, fps, dup_of, strict=True):
        if d < 0:
            kept.append(p.model_copy(update={"simhash": int(fp)}))
        else:
            dropped.append(p.model_copy(update={"simhash": int(fp), "duplicate_of": prompts[int(d)].id}))
    return kept, dropped


def _count_table(path: Path, prompts: list[Prompt], tax: Taxonomy) -> None:
    from misalign.build.generate import domain_counts
    from misalign.io import write_rows

    counts = domain_counts(prompts, tax)
    write_rows(path, ({"dimension": dim, "domain": name, "count": n} for (dim, name), n in counts.items()))
