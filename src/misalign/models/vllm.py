"""``vllm/<path-or-id>``: the vLLM offline engine on a GPU (the ``[vllm]`` extra; imported lazily).

Requests that arrive together are handed to the engine as one ``LLM.chat`` call (vLLM batches them
continuously inside), in a worker thread so the event loop stays free.
"""

from __future__ import annotations

from typing import Any

from misalign.models.base import Completion, ModelError, TokenLogprob
from misalign.models.local import Batch, LocalBatchedModel


class VLLMChatModel(LocalBatchedModel):
    """A vLLM engine behind the :class:`~misalign.models.base.ChatModel` interface."""

    gather_seconds = 0.01  # vLLM batches continuously inside one call: give requests time to join

    def __init__(self, path: str, *, max_concurrency: int = 256, **engine_args: Any) -> None:
        super().__init__()
        self.path = path
        self.name = f"vllm/{path}"
        self.max_concurrency = max_concurrency
        self.max_batch = max_concurrency
        self.engine_args = engine_args

    def _load(self) -> Any:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ModelError("vllm/ models need the [vllm] extra and a GPU: pip install 'misalign-bench[vllm]'") \
                from exc
        return LLM(model=self.path, **self.engine_args)

    def _run_batch(self, engine: Any, batch: Batch) -> list[Completion]:
        from vllm import SamplingParams

        sampling = [SamplingParams(temperature=p.temperature, top_p=p.top_p or 1.0, max_tokens=p.max_tokens or 512,
                                   seed=p.seed, stop=list(p.stop) if p.stop else None,
                                   logprobs=(p.top_logprobs or 1) if p.logprobs else None) for _, p in batch]
        outs = engine.chat([m for m, _ in batch], sampling_params=sampling, use_tqdm=False)
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
