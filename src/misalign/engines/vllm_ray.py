"""``--engine ray`` with a ``vllm/<model>`` judge: Ray Data's LLM processor (``ray.data.llm``) on the cluster's GPUs.

The rows are the eval's requests (one per response and run, each with its shard); :func:`preprocess` builds the
chat messages exactly as the local judge does (:func:`~misalign.bench.judge.judge_messages`, our template) and
the sampling parameters of :class:`~misalign.models.vllm.VLLMChatModel` (seed ``seed + run``);
:func:`postprocess` parses the answer with our verdict parser (:func:`~misalign.bench.judge.judgement_of`, scored
from the token log-probabilities when the answer states no confidence). The driver writes each shard's output as
soon as all its rows are back, so a re-run redoes only unfinished shards (there is no per-call cache on this path:
the engine owns the batch).

Needs ``ray[llm]`` (which pins vLLM) and GPUs; nothing here runs without them except the two functions above.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from misalign.bench.judge import judge_messages, judgement_of
from misalign.bench.runner import EvalConfig
from misalign.errors import ConfigError
from misalign.models.base import Completion, TokenLogprob

BATCH_SIZE = 64
"""Rows per batch sent to a vLLM engine replica."""


def sampling_params(config: EvalConfig, run: int) -> dict[str, Any]:
    """vLLM ``SamplingParams`` of one run, as the local vLLM backend sets them."""
    params: dict[str, Any] = {"temperature": config.temperature, "top_p": 1.0, "max_tokens": config.max_tokens,
                              "seed": config.seed + run}
    if config.logprobs:
        params["logprobs"] = 5
    return params


def preprocess(row: dict[str, Any], *, config: EvalConfig) -> dict[str, Any]:
    """A request row -> the processor's input: our judge messages and this run's sampling parameters."""
    return {**row, "messages": judge_messages(row["prompt"], row["response"], config.template),
            "sampling_params": sampling_params(config, int(row["run"]))}


def _logprobs(row: dict[str, Any]) -> list[TokenLogprob] | None:
    """The engine's per-token log-probabilities (token id -> {logprob, decoded_token}) as ours."""
    positions = row.get("logprobs")
    if not positions:
        return None
    out = []
    for tid, pos in zip(row.get("generated_tokens") or [], positions, strict=False):
        pos = {int(k): v for k, v in pos.items() if v is not None}
        chosen = pos.get(int(tid))
        if chosen is None:
            continue
        top = {v.get("decoded_token") or "": float(v["logprob"]) for v in pos.values()}
        out.append(TokenLogprob(chosen.get("decoded_token") or "", float(chosen["logprob"]), top))
    return out


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's output row -> our judgement (verdict JSON, raw text, error) with its request index."""
    error = row.get("__inference_error__") or None
    completion = Completion(text=row.get("generated_text") or "", logprobs=None if error else _logprobs(row),
                            error=str(error) if error else None)
    sent = [m["content"] for m in judge_messages(row["prompt"], row["response"], row.get("template") or "judge_v1")]
    j = judgement_of(completion, sent)
    return {"g": int(row["g"]), "shard": int(row["shard"]), "verdict": j.verdict.model_dump_json(), "raw": j.raw,
            "error": j.error, "with_logprobs": bool(completion.logprobs) and j.error is None,
            "with_confidence": j.verdict.confidence is not None and j.error is None}


def processor_config(config: EvalConfig, settings: Any) -> Any:
    """The ``vLLMEngineProcessorConfig`` of a run: the model, tensor/pipeline parallel size, replicas."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=config.model.removeprefix("vllm/"),
        engine_kwargs={"tensor_parallel_size": settings.tensor_parallel,
                       "pipeline_parallel_size": settings.pipeline_parallel},
        concurrency=settings.replicas, batch_size=BATCH_SIZE)


def build_judge_processor(config: EvalConfig, settings: Any) -> Any:
    """The Ray Data LLM processor judging request rows (``build_processor`` in ray 2.60)."""
    from ray.data.llm import build_processor

    return build_processor(processor_config(config, settings), preprocess=partial(preprocess, config=config),
                           postprocess=postprocess)


def run_vllm_shards(plan: Any, todo: list[int], config: EvalConfig, settings: Any, store: Any) -> None:
    """The unfinished shards' requests through vLLM replicas; each shard written once all its rows are back."""
    from misalign.engines.raydata import init_ray

    ray = init_ray(settings.address)
    try:
        processor = build_judge_processor(config, settings)
    except ImportError as exc:
        raise ConfigError("vllm/ models on --engine ray need ray[llm] (it pins vLLM) and GPUs") from exc
    rows = [{"g": g, "shard": s, "prompt": plan.requests[g].prompt, "response": plan.requests[g].response,
             "run": plan.requests[g].run, "template": config.template} for s in todo for g in plan.members[s]]
    pending: dict[int, list[list[Any]]] = {s: [] for s in todo}
    served: dict[int, dict[str, int]] = {s: {"answers": 0, "with_logprobs": 0, "with_confidence": 0} for s in todo}
    for out in processor(ray.data.from_items(rows)).iter_rows():
        s = int(out["shard"])
        pending[s].append([int(out["g"]), json.loads(out["verdict"]), out["raw"], out["error"]])
        if out["error"] is None:
            served[s]["answers"] += 1
            served[s]["with_logprobs"] += bool(out["with_logprobs"])
            served[s]["with_confidence"] += bool(out["with_confidence"])
        if len(pending[s]) == len(plan.members[s]):
            store.write(s, {"key": plan.keys[s], "served": served[s], "judgements": sorted(pending[s])})
