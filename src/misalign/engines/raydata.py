"""``--engine ray``: the eval's judge calls and the build's classify/dedup as Ray Data pipelines (respond and filter:
:mod:`misalign.engines.raybuild`, expansion rounds: :mod:`misalign.engines.rayexpand`, through :func:`run_sharded`
here).

Sharding: every request goes to shard ``sha256(prompt NUL response) mod shards`` (all runs of one pair in one
shard, so identical pairs are still asked once). The shard rows go through ``map_batches`` into an actor pool of
``workers`` actors, each holding one judge (the same :class:`~misalign.bench.judge.Judge` the local engine uses);
Ray Data does the scheduling and restarts an actor that dies, retrying its shard.

Caching and resume: each shard's calls go through its own SQLite :class:`~misalign.models.CallCache`
(``<run>/shards/cache-<shard>.sqlite``, opened by the worker that runs the shard), and each finished shard's
judgements are written atomically (temp file, then move) to the shard store (``<run>/shards/`` or any URI
``pyarrow.fs`` understands), keyed by a digest of its requests and the config. A re-run skips every shard whose
output is there with that key and no failed call; an unfinished shard is run again and its cache answers the calls
it finished. The driver assembles the judgements in request order and the runner writes ``results.jsonl`` and
``metrics.json`` exactly as the local engine does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from misalign.bench.judge import Judge, Judgement, JudgeRequest
from misalign.bench.runner import Case, EarlyStop, EvalConfig, Progress, judge_requests
from misalign.errors import ConfigError, RunError
from misalign.models import CallCache, Endpoint
from misalign.models.base import Stop
from misalign.records import Verdict

SHARDS = 64
"""Default number of shards (fixed per run: it decides which requests share a shard)."""
SHARD_DIR = "shards"


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide a Ray run goes (settings that never change an answer)."""

    address: str | None = None
    """An existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None starts a local one."""
    workers: int = 2
    """Actors (judges, or classifiers) working at once; each sends up to ``max_concurrency`` requests."""
    shards: int = SHARDS
    store: str | None = None
    """Shard outputs: a folder or a ``pyarrow.fs`` URI (``s3://bucket/run``); default ``<run>/shards``."""
    tensor_parallel: int = 1
    """vLLM only: GPUs per engine replica (tensor parallel)."""
    pipeline_parallel: int = 1
    """vLLM only: pipeline-parallel stages per replica."""
    replicas: int = 1
    """vLLM only: engine replicas (data parallel)."""


def shard_of(prompt: str, response: str, shards: int) -> int:
    """The shard of a (prompt, response) pair: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{prompt}\x00{response}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def init_ray(address: str | None = None) -> Any:
    """Ray, connected to ``address`` (or a new local cluster) unless already initialised; quiet progress bars."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError("--engine ray needs the [ray] extra: pip install 'misalign-bench[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", configure_logging=True)
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset "execution finished" lines
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray


class ShardStore:
    """Shard outputs (one JSON document each) in a folder or a ``pyarrow.fs`` URI, each written atomically."""

    def __init__(self, uri: str, prefix: str = "eval") -> None:
        from pyarrow import fs

        self.uri, self.prefix = uri, prefix
        self.fs, self.root = fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
        self.fs.create_dir(self.root, recursive=True)

    def path(self, shard: int) -> str:
        return f"{self.root}/{self.prefix}-{shard:05d}.json"

    def write(self, shard: int, doc: dict[str, Any]) -> None:
        """Write a shard's document: a temp file, then a move (a rename on local disks; object stores put whole)."""
        final = self.path(shard)
        tmp = f"{final}.tmp-{os.getpid()}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())
        self.fs.move(tmp, final)

    def read(self, shard: int) -> dict[str, Any] | None:
        """A shard's document, or None when there is none (or a torn one)."""
        try:
            with self.fs.open_input_stream(self.path(shard)) as src:
                return json.loads(src.read())
        except (FileNotFoundError, OSError, ValueError):
            return None


def _key_env(endpoint: Endpoint | None) -> dict[str, Any]:
    """``map_batches`` keywords that hand the endpoint's API key (when set here) to the workers."""
    env_var = endpoint.api_key_env if endpoint else "OPENAI_API_KEY"
    return {"runtime_env": {"env_vars": {env_var: os.environ[env_var]}}} if os.environ.get(env_var) else {}


def key_shards(identity: str, payloads: dict[int, str]) -> dict[int, str]:
    """Each shard's key: a digest of what decides its answers (``identity``) and its payload."""
    return {s: hashlib.sha256(f"{identity}\x00{p}".encode()).hexdigest() for s, p in payloads.items()}


def run_sharded(actor: type, args: tuple[Any, ...], prefix: str, payloads: dict[int, str], keys: dict[int, str],
                settings: RaySettings, out_dir: Path, *, complete: Callable[[dict[str, Any]], bool],
                endpoint: Endpoint | None = None) -> dict[int, dict[str, Any]]:
    """Every shard's output document: those in the store with their key that are ``complete`` are read, the others
    run (one shard per batch) through an actor pool of ``actor(*args, cache_dir, store_uri)``, which writes each
    shard's document as ``{"key": ..., ...}`` under ``prefix``. A ConfigError when a shard wrote none."""
    store_uri = settings.store or str((out_dir / SHARD_DIR).resolve())
    store = ShardStore(store_uri, prefix)

    def read(s: int) -> dict[str, Any] | None:
        doc = store.read(s)
        return doc if doc is not None and doc.get("key") == keys[s] else None

    docs = {s: d for s in payloads if (d := read(s)) is not None and complete(d)}
    todo = [s for s in payloads if s not in docs]
    if todo:
        ray = init_ray(settings.address)
        ds = ray.data.from_items([{"shard": s, "key": keys[s], "payload": payloads[s]} for s in todo],
                                 override_num_blocks=len(todo))
        pool = ray.data.ActorPoolStrategy(size=max(1, min(settings.workers, len(todo))))
        ds.map_batches(actor, batch_size=1, compute=pool, num_cpus=1,
                       fn_constructor_args=(*args, str((out_dir / SHARD_DIR).resolve()), store_uri),
                       **_key_env(endpoint)).materialize()
        docs |= {s: d for s in todo if (d := read(s)) is not None}
    missing = [s for s in payloads if s not in docs]
    if missing:
        raise ConfigError(f"{len(missing)} {prefix} shard(s) wrote no output (first: {store.path(missing[0])})")
    return docs


# -- eval -------------------------------------------------------------------------------------------------

def _judgement_row(g: int, j: Judgement) -> list[Any]:
    return [g, j.verdict.model_dump(mode="json"), j.raw, j.error]


def _judgement_of(row: list[Any]) -> Judgement:
    return Judgement(Verdict.model_validate(row[1]), raw=row[2], error=row[3])


class ShardJudge:
    """A Ray Data actor: one judge, judging whole shards through each shard's own call cache."""

    def __init__(self, config: EvalConfig, endpoint: Endpoint | None, cache_dir: str, store: str) -> None:
        self.judge = config.make_judge(endpoint)
        self.cache_dir = Path(cache_dir)
        self.store = ShardStore(store)
        self.early = EarlyStop(Stop())
        """The local engine's early stop, over this worker's calls: once its first ones all failed, it sends none."""

    async def _judge(self, shard: int, requests: list[JudgeRequest]) -> list[Judgement]:
        with CallCache(self.cache_dir / f"cache-{shard:05d}.sqlite") as cache:
            try:
                return await self.judge.judge(requests, cache=cache, stop=self.early.stop,
                                              on_result=lambda _i, error: self.early.result(error))
            finally:
                await self.judge.aclose()  # the HTTP session belongs to this event loop

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failed = []
        for shard, key, payload in zip(batch["shard"], batch["key"], batch["requests"], strict=True):
            rows = json.loads(payload)
            before = self.judge.served()
            answers = asyncio.run(self._judge(int(shard), [JudgeRequest(p, r, run) for _, p, r, run in rows]))
            after = self.judge.served()
            served = {k: v - before.get(k, 0) for k, v in after.items()}
            judged = [_judgement_row(row[0], j) for row, j in zip(rows, answers, strict=True)]
            self.store.write(int(shard), {"key": str(key), "served": served, "judgements": judged,
                                          **({"stopped": self.early.stop.reason} if self.early.stop.reason else {})})
            failed.append(sum(j.error is not None for j in answers))
        return {"shard": np.asarray(batch["shard"]), "failed": np.asarray(failed, dtype=np.int64)}


@dataclass
class _Plan:
    """The shards of one eval: each one's requests (global indices), payload and key."""

    requests: list[JudgeRequest]
    index: list[tuple[int, int]]
    members: dict[int, list[int]]
    payloads: dict[int, str]
    keys: dict[int, str]


def plan_shards(judge: Judge, cases: Sequence[Case], config: EvalConfig, shards: int) -> _Plan:
    """Split the eval's requests into shards and key each shard by its requests, the config and the scorer."""
    requests, index = judge_requests(cases, config)
    members: dict[int, list[int]] = {}
    for g, q in enumerate(requests):
        members.setdefault(shard_of(q.prompt, q.response, shards), []).append(g)
    identity = json.dumps({"config": asdict(config), "scorer": getattr(judge, "fingerprint", None),
                           "model": judge.name, "shards": shards}, sort_keys=True, default=str)
    payloads = {s: json.dumps([[g, requests[g].prompt, requests[g].response, requests[g].run] for g in gs],
                              ensure_ascii=False) for s, gs in sorted(members.items())}
    return _Plan(requests, index, members, payloads, key_shards(identity, payloads))


def finished(store: ShardStore, plan: _Plan) -> dict[int, dict[str, Any]]:
    """The shards already done: their output is there, for these requests, with no failed call."""
    done = {}
    for s in plan.members:
        doc = store.read(s)
        if doc is not None and doc.get("key") == plan.keys[s] and not any(r[3] for r in doc["judgements"]):
            done[s] = doc
    return done


def ray_judge_all(settings: RaySettings, endpoint: Endpoint | None = None):
    """The runner's ``judge_all`` for :func:`~misalign.bench.runner.evaluate`, on Ray Data."""

    def judge_all(judge: Judge, cases: Sequence[Case], config: EvalConfig, out_dir: Path,
                  progress: Progress | None) -> tuple[list[list[Judgement]], dict[str, int]]:
        plan = plan_shards(judge, cases, config, settings.shards)
        store_uri = settings.store or str((out_dir / SHARD_DIR).resolve())
        store = ShardStore(store_uri)
        docs = finished(store, plan)
        total = len(plan.requests)
        done = sum(len(plan.members[s]) for s in docs)
        if progress:
            progress(done, total, f"{len(docs)} of {len(plan.members)} shards done")
        todo = [s for s in plan.members if s not in docs]
        if todo:
            if config.model.startswith("vllm/"):
                from misalign.engines.vllm_ray import run_vllm_shards

                run_vllm_shards(plan, todo, config, settings, store)
            else:
                _run_shards(plan, todo, config, settings, endpoint, str((out_dir / SHARD_DIR).resolve()),
                            store_uri, lambda n: progress(n, total, "") if progress else None, done)
            docs |= {s: d for s in todo if (d := store.read(s)) is not None and d.get("key") == plan.keys[s]}
        missing = [s for s in plan.members if s not in docs]
        if missing:
            raise ConfigError(f"{len(missing)} shard(s) wrote no output (first: {store.path(missing[0])})")
        stopped = sorted(d["stopped"] for d in docs.values() if d.get("stopped"))
        if stopped:  # as the local engine: a worker's first calls all failed; what was answered is kept
            raise RunError(f"{stopped[0]}; re-run the same command to retry them (answered calls are cached)")
        answers: dict[int, Judgement] = {}
        served: dict[str, int] = {}
        for doc in docs.values():
            answers.update((row[0], _judgement_of(row)) for row in doc["judgements"])
            for k, v in doc.get("served", {}).items():
                served[k] = served.get(k, 0) + v
        out = [[Judgement(Verdict(verdict="unparseable"))] * len(cases) for _ in range(config.runs)]
        for g, (run, k) in enumerate(plan.index):
            out[run][k] = answers[g]
        return out, served

    return judge_all


def _run_shards(plan: _Plan, todo: list[int], config: EvalConfig, settings: RaySettings,
                endpoint: Endpoint | None, cache_dir: str, store_uri: str, tick: Any, done: int) -> None:
    """The unfinished shards through an actor pool of judges (one shard per batch)."""
    ray = init_ray(settings.address)
    ds = ray.data.from_items([{"shard": s, "key": plan.keys[s], "requests": plan.payloads[s]} for s in todo],
                             override_num_blocks=len(todo))
    pool = ray.data.ActorPoolStrategy(size=max(1, min(settings.workers, len(todo))))
    ds = ds.map_batches(ShardJudge, batch_size=1, compute=pool, num_cpus=1,
                        fn_constructor_args=(config, endpoint, cache_dir, store_uri), **_key_env(endpoint))
    for row in ds.iter_rows():
        done += len(plan.members[int(row["shard"])])
        tick(done)


# -- build ------------------------------------------------------------------------------------------------

def prompt_shard(prompt_id: str, shards: int) -> int:
    """The shard of a prompt, from its id."""
    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") % shards


class ShardClassifier:
    """A Ray Data actor: one classifier (embedded or chat), classifying whole shards of prompts."""

    def __init__(self, settings: dict[str, Any], taxonomy: Any, endpoint: Endpoint | None, prefix: str,
                 cache_dir: str, store: str) -> None:
        from misalign.build.classify import get_classifier
        from misalign.models import ModelPool

        self.pool = ModelPool(endpoint)
        self.classifier = get_classifier(settings["classifier"], taxonomy, pool=self.pool, delta=settings["delta"],
                                         encoder=settings["encoder"], semantic_types=settings["semantic_types"])
        if settings.get("max_tokens") and hasattr(self.classifier, "PARAMS"):  # as `misalign classify --max-tokens`
            from dataclasses import replace

            self.classifier.PARAMS = replace(self.classifier.PARAMS, max_tokens=settings["max_tokens"])
        self.prefix, self.cache_dir, self.store = prefix, Path(cache_dir), ShardStore(store, prefix)

    async def _classify(self, shard: int, prompts: list[Any]) -> Any:
        with CallCache(self.cache_dir / f"{self.prefix}-cache-{shard:05d}.sqlite") as cache:
            try:
                return await self.classifier.classify(prompts, cache=cache)
            finally:
                await self.pool.aclose()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from misalign.records import Prompt

        failed = []
        for shard, key, payload in zip(batch["shard"], batch["key"], batch["payload"], strict=True):
            rows = json.loads(payload)
            result = asyncio.run(self._classify(int(shard), [Prompt.model_validate(d) for _, d in rows]))
            self.store.write(int(shard), {"key": str(key), "failures": result.failures, "prompts": [
                [g, p.model_dump(mode="json")] for (g, _), p in zip(rows, result.prompts, strict=True)]})
            failed.append(len(result.failures))
        return {"shard": np.asarray(batch["shard"]), "failed": np.asarray(failed, dtype=np.int64)}


def ray_classify(prompts: Sequence[Any], settings: dict[str, Any], taxonomy: Any, endpoint: Endpoint | None,
                 ray_settings: RaySettings, out_dir: Path, prefix: str = "classify") -> Any:
    """Classify ``prompts`` on Ray Data with the classifier ``settings`` names (classifier, delta, encoder,
    semantic_types, optionally max_tokens), shard outputs and caches under ``out_dir/shards`` (``<prefix>-<shard>``
    and ``<prefix>-cache-<shard>``): the same :class:`~misalign.build.classify.Classification` as the local step,
    prompts in input order. Finished shards (output there with this key, no failure) are not run again."""
    from misalign.build.classify import Classification
    from misalign.records import Prompt

    shards = ray_settings.shards
    members: dict[int, list[int]] = {}
    for g, p in enumerate(prompts):
        members.setdefault(prompt_shard(p.id, shards), []).append(g)
    identity = json.dumps({**settings, "taxonomy": taxonomy.version, "shards": shards}, sort_keys=True, default=str)
    payloads = {s: json.dumps([[g, prompts[g].model_dump(mode="json")] for g in gs], ensure_ascii=False)
                for s, gs in sorted(members.items())}
    docs = run_sharded(ShardClassifier, (settings, taxonomy, endpoint, prefix), prefix, payloads,
                       key_shards(identity, payloads), ray_settings, out_dir, complete=lambda d: not d["failures"],
                       endpoint=endpoint)
    out: list[Any] = [None] * len(prompts)
    failures: dict[str, dict[str, Any]] = {}
    for doc in docs.values():
        for g, d in doc["prompts"]:
            out[g] = Prompt.model_validate(d)
        for f in doc["failures"]:
            failures[json.dumps(f, sort_keys=True)] = f
    order = {p.id: i for i, p in enumerate(prompts)}
    return Classification(out, sorted(failures.values(), key=lambda f: (order.get(f.get("id"), -1),
                                                                         f.get("field", ""))))


def _fingerprint_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from misalign.build.simhash import fingerprints

    return {"g": batch["g"], "fp": fingerprints([str(t) for t in batch["text"]], workers=1)}


def ray_fingerprints(texts: Sequence[str], ray_settings: RaySettings) -> np.ndarray:
    """64-bit SimHash fingerprints of ``texts`` (uint64, in order) computed by Ray Data tasks, ``shards`` blocks."""
    ray = init_ray(ray_settings.address)
    if not texts:
        return np.zeros(0, dtype=np.uint64)
    ds = ray.data.from_items([{"g": g, "text": t} for g, t in enumerate(texts)],
                             override_num_blocks=min(ray_settings.shards, len(texts)))
    out = np.zeros(len(texts), dtype=np.uint64)
    for batch in ds.map_batches(_fingerprint_batch, batch_format="numpy", num_cpus=1).iter_batches(
            batch_format="numpy", batch_size=None):
        out[batch["g"]] = batch["fp"].astype(np.uint64)
    return out
