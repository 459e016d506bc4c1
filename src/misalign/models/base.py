"""The one interface every stage talks to: generation parameters, completions, the ``ChatModel`` protocol,
and :func:`complete_many`, which runs a batch of requests through a model and the call cache.

A model never raises for a failed request: it returns a :class:`Completion` whose ``error`` says why (after its
retries), so a run goes on and counts failures. It raises :class:`ModelError` for set-up mistakes that no retry
fixes (wrong URL, missing key, unknown model), early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from misalign.errors import MisalignError

Message = dict[str, str]
Request = tuple[list[Message], "GenerationParams", int]
"""(messages, parameters, run index): the run index is part of the cache key, so repeated runs sample anew."""


class ModelError(MisalignError, RuntimeError):
    """A set-up error no retry can fix: unknown model, unreachable endpoint, missing or rejected API key."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings sent with a request; ``None`` fields are left to the server's defaults."""

    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int | None = 512
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    stop: tuple[str, ...] | None = None
    response_format: dict[str, Any] | None = None

    def __post_init__(self) -> None:  # computed once: cache keys need it for every request
        d = asdict(self)
        if d["stop"] is not None:
            d["stop"] = list(d["stop"])
        object.__setattr__(self, "_dict", {k: v for k, v in d.items()
                                           if v is not None and not (k == "logprobs" and v is False)})

    def to_dict(self) -> dict[str, Any]:
        """The set fields, JSON-ready (stable: used in cache keys)."""
        return dict(self._dict)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability, and the most likely alternatives at that position."""

    token: str
    logprob: float
    top: dict[str, float] | None = None


@dataclass
class Completion:
    """What a model returned for one request, or why it could not."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"text": self.text, "finish_reason": self.finish_reason, "usage": self.usage}
        if self.logprobs is not None:
            d["logprobs"] = [[t.token, t.logprob, t.top] for t in self.logprobs]
        if self.error is not None:
            d["error"] = self.error
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], cached: bool = False) -> Completion:
        lps = d.get("logprobs")
        return cls(text=d.get("text") or "", finish_reason=d.get("finish_reason"), usage=d.get("usage") or {},
                   logprobs=[TokenLogprob(t, lp, top) for t, lp, top in lps] if lps is not None else None,
                   error=d.get("error"), cached=cached)


@runtime_checkable
class ChatModel(Protocol):
    """An async chat model. ``name`` is the model string (it keys the cache); ``max_concurrency`` bounds the
    requests :func:`complete_many` keeps in flight."""

    name: str
    max_concurrency: int

    async def complete(self, messages: list[Message], params: GenerationParams) -> Completion: ...

    async def aclose(self) -> None: ...


class Stop:
    """Tells :func:`complete_many` to send no new request; the calls in flight finish (and are stored)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        """Stop, for ``reason`` (the first reason given is kept)."""
        self.reason = self.reason or reason


class CacheWriteError(ModelError):
    """Answers could not be stored in the call cache (a full or read-only disk): the run stopped."""


async def complete_many(model: ChatModel, requests: Sequence[Request], *, cache: Any = None,
                        on_result: Callable[[int, Completion], None] | None = None,
                        stop: Stop | None = None) -> list[Completion]:
    """Run ``requests`` through ``model``; return completions in request order.

    Cache hits cost no request; every successful answer is stored the moment it arrives, so a killed run
    loses at most the calls in flight. Identical requests in one batch are sent once. At most
    ``model.max_concurrency`` requests are in flight (workers pull from a shared queue, so memory stays flat
    for large batches). ``on_result(index, completion)`` is called once per request, hits included.
    When ``stop`` is set, no new request is sent and the unsent ones come back as ``error="not run"``. The first
    failed cache write sets it too; the answers of the calls in flight are awaited, stored if the disk allows,
    and :class:`CacheWriteError` is raised naming the cache file and the cause.
    """
    stop = stop or Stop()
    results, pending = _from_cache(model, requests, cache, on_result)
    saver = _Saver(cache, stop)
    queue: asyncio.Queue[tuple[str, list[int]]] = asyncio.Queue()
    for item in pending.items():
        queue.put_nowait(item)

    async def worker() -> None:
        while stop.reason is None:
            try:
                key, idxs = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            messages, params, _ = requests[idxs[0]]
            try:
                comp = await model.complete(messages, params)
            except ModelError:
                raise
            except Exception as exc:  # a backend bug must not lose the batch: record it as a failed call
                comp = Completion(error=f"{type(exc).__name__}: {exc}")
            if cache is not None and comp.ok:
                saver.add(key, comp)
            for i in idxs:
                results[i] = comp
                if on_result:
                    on_result(i, comp)

    n_workers = max(1, min(getattr(model, "max_concurrency", 8), len(pending)))
    if pending:
        tasks = [asyncio.create_task(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if cache is not None:
                saver.save()
    saver.check()
    return [r if r is not None else Completion(error="not run") for r in results]


class _Saver:
    """Stores answers in the call cache. Answers that arrive in the same event-loop tick are committed together
    at the end of that tick: one transaction instead of one per answer, and still on disk before the loop waits
    for more network input. The first failed write stops the batch (nothing new is sent); later answers are kept
    for one more try at the end."""

    def __init__(self, cache: Any, stop: Stop) -> None:
        self.cache, self.stop = cache, stop
        self.unsaved: list[tuple[str, Completion]] = []
        self.error: BaseException | None = None

    def add(self, key: str, completion: Completion) -> None:
        if not self.unsaved or self.error is not None:
            asyncio.get_running_loop().call_soon(self.save)
        self.unsaved.append((key, completion))

    def save(self) -> None:
        if not self.unsaved:
            return
        try:
            self.cache.put_many(self.unsaved)
        except Exception as exc:  # full or read-only disk: send nothing more, keep the answers for a last try
            if self.error is None:
                self.error = exc
                self.stop.set(f"cannot store answers: {exc}")
            return
        self.unsaved.clear()

    def check(self) -> None:
        """Raise :class:`CacheWriteError` if a write failed, saying how many answers could not be kept."""
        if self.error is None:
            return
        lost = (f"; {len(self.unsaved)} answers received could not be kept" if self.unsaved
                else "; every answer received is kept")
        raise CacheWriteError(f"{self.stop.reason}{lost}. Free space (or fix the folder) and re-run the same "
                              "command: only the missing calls are sent")


def _from_cache(model: ChatModel, requests: Sequence[Request], cache: Any,
                on_result: Callable[[int, Completion], None] | None
                ) -> tuple[list[Completion | None], dict[str, list[int]]]:
    """Cached answers in request order (None where missing) and the missing requests grouped by cache key
    (identical requests share one call), ``on_result`` called for every hit."""
    results: list[Completion | None] = [None] * len(requests)
    keys = [cache.key(model.name, m, p, run) for m, p, run in requests] if cache is not None else []
    found = cache.get_many(keys) if cache is not None else {}
    pending: dict[str, list[int]] = {}
    for i in range(len(requests)):
        hit = found.get(keys[i]) if cache is not None else None
        if hit is not None:
            results[i] = hit
            if on_result:
                on_result(i, hit)
            continue
        pending.setdefault(keys[i] if cache is not None else str(i), []).append(i)
    return results, pending
