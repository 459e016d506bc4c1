"""``--engine ray`` for expansion (Stage I step 2): each round's work on Ray Data, the rounds in the driver.

The rounds share one budget, one set of texts seen, one RNG and the domain counts, so
:func:`~misalign.build.expand.expand` runs them in the driver; its two hooks send each round's work here.

Generator calls (:func:`ray_complete`): each request goes to shard ``sha256(request JSON) mod shards`` (the call
cache's key, so identical requests share a shard and are asked once, as locally). Each shard goes through
``map_batches`` into an actor pool of ``workers`` :class:`ShardGenerator` actors holding the generator, which run
:func:`~misalign.models.complete_many` on it through the shard's own call cache
(``<out>/shards/expand-cache-<shard>.sqlite``: one per shard for every round, since a request's shard depends only
on the request) and write its completions atomically to ``expand-r<round>-<shard>.json``, keyed by a digest of
its requests and the generator. A re-run skips the shards written with that key and no failed call; a failed
call comes back as the failed :class:`~misalign.models.base.Completion` the local engine gets, so the report's
``calls_failed`` is the same.

Classification: with a chat classifier, the round's new prompts go through
:func:`~misalign.engines.raydata.ray_classify` (:func:`ray_classify_round`; outputs and caches
``expand-classify-r<round>-*``), so its calls spread over the workers too. The embedded classifier classifies them
in the driver: a round has at most ``max_new`` new prompts, and a Ray pass costs more than it saves (measured on 2
CPUs: 9-16 s per pass for actors that load the encoder, against 2 s for 112 new prompts in a warm driver).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from misalign.build.classify import Classification
from misalign.build.expand import ClassifyRound, CompleteRound
from misalign.engines.raybuild import PoolActor
from misalign.engines.raydata import RaySettings, key_shards, ray_classify, run_sharded
from misalign.models import EMBEDDED, CallCache, Endpoint, GenerationParams, complete_many
from misalign.models.base import Completion, Request
from misalign.records import Prompt
from misalign.taxonomy import Taxonomy

PREFIX = "expand"


def request_shard(model: str, request: Request, shards: int) -> int:
    """The shard of a request: its call-cache key (sha256 of its JSON) mod ``shards``."""
    return int(CallCache.key(model, *request)[:16], 16) % shards


def _request_row(g: int, request: Request) -> list[Any]:
    messages, params, run = request
    return [g, messages, asdict(params), run]


def _request_of(row: list[Any]) -> Request:
    _, messages, params, run = row
    stop = tuple(params["stop"]) if params["stop"] is not None else None
    return messages, GenerationParams(**{**params, "stop": stop}), run


class ShardGenerator(PoolActor):
    """A Ray Data actor: the expansion's generator, answering whole shards of requests through each shard's own
    call cache."""

    def __init__(self, spec: str, endpoint: Endpoint | None, prefix: str, cache_dir: str, store: str) -> None:
        super().__init__(endpoint, prefix, cache_dir, store)
        self.spec = spec

    async def _complete(self, shard: int, requests: list[Request]) -> list[Completion]:
        with CallCache(self.cache_dir / f"{PREFIX}-cache-{shard:05d}.sqlite") as cache:
            return await complete_many(self.pool.get(self.spec), requests, cache=cache)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failed = []
        for shard, key, payload in zip(batch["shard"], batch["key"], batch["payload"], strict=True):
            rows = json.loads(payload)
            answers = self.loop.run_until_complete(self._complete(int(shard), [_request_of(r) for r in rows]))
            n_failed = sum(not c.ok for c in answers)
            self.store.write(int(shard), {"key": str(key), "failed": n_failed, "completions": [
                [row[0], c.to_dict()] for row, c in zip(rows, answers, strict=True)]})
            failed.append(n_failed)
        return {"shard": np.asarray(batch["shard"]), "failed": np.asarray(failed, dtype=np.int64)}


def ray_complete(spec: str, endpoint: Endpoint | None, ray_settings: RaySettings, out_dir: Path) -> CompleteRound:
    """The :data:`~misalign.build.expand.CompleteRound` hook: a round's requests to the generator ``spec`` on Ray
    Data, shard outputs and caches under ``out_dir/shards``; completions in request order."""
    shards = ray_settings.shards

    async def complete(rnd: int, requests: list[Request]) -> list[Completion]:
        members: dict[int, list[int]] = {}
        for g, q in enumerate(requests):
            members.setdefault(request_shard(spec, q, shards), []).append(g)
        payloads = {s: json.dumps([_request_row(g, requests[g]) for g in gs], ensure_ascii=False)
                    for s, gs in sorted(members.items())}
        identity = json.dumps({"model": spec, "shards": shards}, sort_keys=True)
        prefix = f"{PREFIX}-r{rnd}"
        docs = run_sharded(ShardGenerator, (spec, endpoint, prefix), prefix, payloads,
                           key_shards(identity, payloads), ray_settings, out_dir, complete=lambda d: not d["failed"],
                           endpoint=endpoint)
        out: list[Completion] = [Completion(error="not run")] * len(requests)
        for doc in docs.values():
            for g, d in doc["completions"]:
                out[g] = Completion.from_dict(d)
        return out

    return complete


def ray_classify_round(settings: dict[str, Any], taxonomy: Taxonomy, endpoint: Endpoint | None,
                       ray_settings: RaySettings, out_dir: Path) -> ClassifyRound:
    """The :data:`~misalign.build.expand.ClassifyRound` hook: a round's new prompts through
    :func:`~misalign.engines.raydata.ray_classify` with the classifier ``settings`` (as classify's)."""

    async def classify(rnd: int, prompts: list[Prompt]) -> Classification:
        if not prompts:
            return Classification([])
        return ray_classify(prompts, settings, taxonomy, endpoint, ray_settings, out_dir,
                            prefix=f"{PREFIX}-classify-r{rnd}")

    return classify


def ray_round_hooks(generator: str, classify_settings: dict[str, Any], taxonomy: Taxonomy, endpoint: Endpoint | None,
                    ray_settings: RaySettings, out_dir: Path) -> dict[str, Any]:
    """:func:`~misalign.build.expand.expand`'s keywords that run its rounds' work on Ray Data: ``complete`` for the
    generator's calls, and ``classify`` unless ``classify_settings`` (classifier, delta, encoder, semantic_types)
    name the embedded classifier, which classifies in the driver (module docstring)."""
    hooks: dict[str, Any] = {"complete": ray_complete(generator, endpoint, ray_settings, out_dir)}
    if classify_settings["classifier"] != EMBEDDED:
        hooks["classify"] = ray_classify_round(classify_settings, taxonomy, endpoint, ray_settings, out_dir)
    return hooks
