"""``vllm/<path-or-id>``: the vLLM offline engine on a GPU (the ``[vllm]`` extra; imported lazily).

Requests that arrive together are handed to the engine as one ``LLM.chat`` call (vLLM batches them
continuously inside), in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from misalign.models.base import Completion, GenerationParams, Message, ModelError, TokenLogprob


class VLLMChatModel:
    """A vLLM engine behind the :class:`~misalign.models.base.ChatModel` interface."""

    def __init__(self, path: str, *, max_concurrency: int = 256, **engine_args: Any) -> None:
        self.path = path
        self.name = f"vllm/{path}"
        self.max_concurrency = max_concurrency
        self.engine_args = engine_args
        self._llm: Any = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelError("vllm/ models need the [vllm] extra and a GPU: pip install 'misalign-bench[vllm]'") \
                from exc
        return LLM(model=self.path, **self.engine_args)

    async def complete(self, messages: list[Message], params: GenerationParams) -> Completion:
        async with self._lock:
            if self._llm is None:
                self._llm = await asyncio.to_thread(self._load)
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
            await asyncio.sleep(0.01)  # gather what arrives together into one engine call
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outs = await asyncio.to_thread(self._generate, [(m, p) for m, p, _ in batch])
            except Exception as exc:
                outs = [Completion(error=f"{type(exc).__name__}: {exc}")] * len(batch)
            for (_, _, fut), out in zip(batch, outs, strict=True):
                if not fut.done():
                    fut.set_result(out)

    def _generate(self, reqs: list[tuple[list[Message], GenerationParams]]) -> list[Completion]:
        from vllm import SamplingParams

        sampling = [SamplingParams(temperature=p.temperature, top_p=p.top_p or 1.0, max_tokens=p.max_tokens or 512,
                                   seed=p.seed, stop=list(p.stop) if p.stop else None,
                                   logprobs=(p.top_logprobs or 1) if p.logprobs else None) for _, p in reqs]
        outs = self._llm.chat([m for m, _ in reqs], sampling_params=sampling, use_tqdm=False)
        results = []
        for out in outs:
            o = out.outputs[0]
            lp = None
            if o.logprobs:
                lp = []
                for tid, pos in zip(o.token_ids, o.logprobs, strict=False):
                    chosen = pos[tid]
                    top = {v.decoded_token: float(v.logprob) for v in pos.values()}
                    lp.append(TokenLogprob(chosen.decoded_token or "", float(chosen.logprob), top))
            n_prompt = len(out.prompt_token_ids or [])
            results.append(Completion(text=o.text, finish_reason=o.finish_reason, logprobs=lp,
                                      usage={"prompt_tokens": n_prompt, "completion_tokens": len(o.token_ids),
                                             "total_tokens": n_prompt + len(o.token_ids)}))
        return results

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
