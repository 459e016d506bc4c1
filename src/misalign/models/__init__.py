"""The model layer: one async interface for every backend, chosen by a model string.

- ``openai/<model>``: any OpenAI-compatible endpoint (:mod:`misalign.models.openai`);
- ``hf/<path-or-id>``: a local transformers model (:mod:`misalign.models.hf`, the ``[hf]`` extra);
- ``vllm/<path-or-id>``: the vLLM offline engine (:mod:`misalign.models.vllm`, the ``[vllm]`` extra);
- ``embedded``: the offline default (:mod:`misalign.models.embedded`); not a chat model, the stages call its
  judge and classifier directly.
"""

from __future__ import annotations

from misalign.models.base import (
    ChatModel,
    Completion,
    GenerationParams,
    Message,
    ModelError,
    Request,
    TokenLogprob,
    complete_many,
)
from misalign.models.cache import CallCache

__all__ = [
    "CallCache", "ChatModel", "Completion", "GenerationParams", "Message", "ModelError", "Request",
    "TokenLogprob", "complete_many", "get_model",
]

PREFIXES = ("openai/", "hf/", "vllm/")


def get_model(spec: str, *, base_urls: list[str] | None = None, api_key_env: str = "OPENAI_API_KEY",
              max_concurrency: int = 32, rpm: float | None = None, timeout: float = 120.0,
              max_retries: int = 5) -> ChatModel:
    """The chat model named by ``spec`` (see the module docstring)."""
    if spec.startswith("openai/"):
        from misalign.models.openai import OpenAIChatModel

        return OpenAIChatModel(spec.removeprefix("openai/"), base_urls=base_urls, api_key_env=api_key_env,
                               max_concurrency=max_concurrency, rpm=rpm, timeout=timeout, max_retries=max_retries)
    if spec.startswith("hf/"):
        from misalign.models.hf import HFChatModel

        return HFChatModel(spec.removeprefix("hf/"), batch_size=max(1, min(max_concurrency, 16)))
    if spec.startswith("vllm/"):
        from misalign.models.vllm import VLLMChatModel

        return VLLMChatModel(spec.removeprefix("vllm/"), max_concurrency=max(max_concurrency, 256))
    if spec == "embedded":
        raise ModelError("'embedded' is not a chat model: it judges and classifies directly (use it as --model "
                         "embedded for eval, or --classifier embedded for classify)")
    raise ModelError(f"unknown model {spec!r}: use openai/<model>, hf/<path-or-id>, vllm/<path-or-id> or embedded")
