"""``--engine ray`` for the build's generation steps: respond and filter (steps 4 and 5) as a Ray Data pipeline.

``misalign build`` runs both steps in each shard; the step commands run one (``phase``): ``misalign respond``
writes the candidates' sides, ``misalign filter`` judges and regenerates candidates read from a file.

Sharding: the driver plans the candidates over the whole pool (:func:`~misalign.build.respond.plan_candidates`, so
each keeps its generator) and puts each in shard ``sha256(prompt text) mod shards``; in per-generator mode all
candidates of one prompt share its text, so its shard. Each shard goes through ``map_batches`` into an actor pool of
``workers`` :class:`ShardResponder` actors, which run the local engine's own
:func:`~misalign.build.filter.respond_and_filter` on it: write both sides, judge them, regenerate rejected ones.

Caching and resume: each shard's calls go through its own SQLite :class:`~misalign.models.CallCache`
(``<build>/shards/respond-cache-<shard>.sqlite``), and a finished shard's texts, verdicts, rounds, errors and
outcome per side are written atomically to the shard store (``respond-<shard>.json``), keyed by a digest of its
candidates, the settings and the templates. A re-run skips the shards written with that key and no failed call; a
shard whose worker died runs again and its cache answers every call it had finished. The driver fills the
candidates in place and :func:`~misalign.build.filter.accept` counts them in the local engine's order, so every
file of the build has the local engine's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from misalign.build.filter import TEMPLATE as CHECK_TEMPLATE
from misalign.build.filter import Sides, check_judge, judge_rounds, respond_and_filter
from misalign.build.respond import KINDS, Candidate, Sampling, candidate_from_row, candidate_to_row, write_candidates
from misalign.build.respond import TEMPLATE as RESPOND_TEMPLATE
from misalign.engines.raydata import RaySettings, ShardStore, key_shards, run_sharded
from misalign.models import CallCache, Endpoint, ModelPool
from misalign.templates import load_template

PREFIX = "respond"
PHASES = ("build", "respond", "filter")
"""What a shard runs: both steps (``misalign build``), or one step command's."""
_STATE = ("texts", "verdicts", "rounds", "errors")
"""What a shard changes in a candidate (its prompt, generator and item id come from the driver)."""


def text_shard(text: str, shards: int) -> int:
    """The shard of a prompt, from its text: stable across runs, machines and Python versions."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % shards


def _sampling(settings: dict[str, Any]) -> Sampling:
    return Sampling(seed=settings["seed"], temperature=settings["temperature"], top_p=settings["top_p"],
                    max_tokens=settings["max_tokens"])


class PoolActor:
    """The base of a Ray Data actor that calls models: a :class:`ModelPool` and one event loop for the actor's
    life, so models (and HTTP sessions) stay open from shard to shard; shard outputs in ``store`` under
    ``prefix``."""

    def __init__(self, endpoint: Endpoint | None, prefix: str, cache_dir: str, store: str) -> None:
        self.pool = ModelPool(endpoint)
        self.cache_dir, self.store = Path(cache_dir), ShardStore(store, prefix)
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        """Ray Data drops the actor when the pipeline ends: close the models (HTTP sessions) on their loop."""
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(self.pool.aclose())
            loop.close()


class ShardResponder(PoolActor):
    """A Ray Data actor: the generators and the judge, writing and filtering whole shards of candidates, each
    through its own call cache."""

    def __init__(self, settings: dict[str, Any], endpoint: Endpoint | None, cache_dir: str, store: str) -> None:
        super().__init__(endpoint, PREFIX, cache_dir, store)
        self.settings = settings

    async def _run(self, shard: int, cands: list[Candidate]) -> tuple[Sides, int]:
        failed = 0

        def count(_i: int, c: Any) -> None:
            nonlocal failed
            failed += c.error is not None

        s, phase = self.settings, self.settings.get("phase", "build")
        generators = {g: self.pool.get(g) for g in s["generators"]}
        sides = Sides(pending=set())
        with CallCache(self.cache_dir / f"{PREFIX}-cache-{shard:05d}.sqlite") as cache:
            if phase == "respond":
                await write_candidates(cands, generators, sampling=_sampling(s), cache=cache, on_result=count)
            elif phase == "filter":
                sides = await judge_rounds(cands, self.pool.get(s["judge"]), generators, max_rounds=s["max_rounds"],
                                           sampling=_sampling(s), cache=cache, on_result=count)
            else:
                sides = await respond_and_filter(cands, generators, self.pool.get(s["judge"]),
                                                 max_rounds=s["max_rounds"], sampling=_sampling(s), cache=cache,
                                                 on_respond=count, on_filter=count)
        return sides, failed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        failed = []
        for shard, key, payload in zip(batch["shard"], batch["key"], batch["payload"], strict=True):
            rows = json.loads(payload)
            cands = [candidate_from_row(row) for _, row in rows]
            sides, n_failed = self.loop.run_until_complete(self._run(int(shard), cands))
            out = [[row[0], {**{f: getattr(c, f) for f in _STATE},
                             "passed": [k for k in KINDS if (i, k) in sides.passed],
                             "reasons": {k: r for (j, k), r in sides.last_reason.items() if j == i}}]
                   for i, (row, c) in enumerate(zip(rows, cands, strict=True))]
            self.store.write(int(shard), {"key": str(key), "failed": n_failed, "candidates": out})
            failed.append(n_failed)
        return {"shard": np.asarray(batch["shard"]), "failed": np.asarray(failed, dtype=np.int64)}


def ray_respond_and_filter(cands: list[Candidate], settings: dict[str, Any], endpoint: Endpoint | None,
                           ray_settings: RaySettings, out_dir: Path) -> Sides:
    """:func:`~misalign.build.filter.respond_and_filter` of planned candidates on Ray Data: the candidates are
    filled in place and the sides come back with their indices in ``cands``, as the local engine leaves them.

    ``settings``: generators, judge, max_rounds, seed, temperature, top_p, max_tokens, and ``phase`` (one of
    :data:`PHASES`, default ``build``; ``respond`` needs no judge), and whatever else decides the answers: all of it
    keys the shards. Shard outputs and caches go under ``out_dir/shards``."""
    if settings.get("phase", "build") != "respond":
        check_judge(settings["judge"], settings["generators"])
    shards = ray_settings.shards
    members: dict[int, list[int]] = {}
    for g, c in enumerate(cands):
        members.setdefault(text_shard(c.prompt.prompt, shards), []).append(g)
    identity = json.dumps({**settings, "shards": shards, "templates": [load_template(RESPOND_TEMPLATE).ref,
                                                                       load_template(CHECK_TEMPLATE).ref]},
                          sort_keys=True, default=str)
    payloads = {s: json.dumps([[g, candidate_to_row(cands[g])] for g in gs], ensure_ascii=False)
                for s, gs in sorted(members.items())}
    docs = run_sharded(ShardResponder, (settings, endpoint), PREFIX, payloads, key_shards(identity, payloads),
                       ray_settings, out_dir, complete=lambda d: not d["failed"], endpoint=endpoint)
    sides = Sides(pending=set())
    for doc in docs.values():
        for g, state in doc["candidates"]:
            for f in _STATE:
                setattr(cands[g], f, state[f])
            sides.passed |= {(g, k) for k in state["passed"]}
            sides.last_reason |= {(g, k): r for k, r in state["reasons"].items()}
    return sides
