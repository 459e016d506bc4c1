"""The shared front of in-process backends (``hf/``, ``vllm/``): the engine is loaded once, in a thread;
requests are queued, and what arrives together is handed to the backend's ``_run_batch`` in a worker thread,
so the event loop stays free."""

from __future__ import annotations

import asyncio
from typing import Any

from misalign.models.base import Completion, GenerationParams, Message

Batch = list[tuple[list[Message], GenerationParams]]


class LocalBatchedModel:
    """Subclasses set ``name``, ``max_concurrency`` and ``max_batch`` and implement ``_load`` and
    ``_run_batch``; ``gather_seconds`` is how long to wait for more requests to join a batch."""

    name: str
    max_concurrency: int
    max_batch: int
    gather_seconds: float = 0.0

    def __init__(self) -> None:
        self._engine: Any = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        raise NotImplementedError

    def _run_batch(self, engine: Any, batch: Batch) -> list[Completion]:
        """One completion per request, in order (runs in a worker thread)."""
        raise NotImplementedError

    async def complete(self, messages: list[Message], params: GenerationParams) -> Completion:
        async with self._lock:
            if self._engine is None:
                self._engine = await asyncio.to_thread(self._load)
            if self._worker is None:
                self._queue = asyncio.Queue()
                self._worker = asyncio.create_task(self._serve())
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        await self._queue.put((messages, params, fut))
        return await fut

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(self.gather_seconds)  # let requests issued together join
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            try:
                outs = await asyncio.to_thread(self._run_batch, self._engine, [(m, p) for m, p, _ in batch])
            except Exception as exc:  # a bad batch fails its requests, not the run
                outs = [Completion(error=f"{type(exc).__name__}: {exc}")] * len(batch)
            for (_, _, fut), out in zip(batch, outs, strict=True):
                if not fut.done():
                    fut.set_result(out)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._engine = None
