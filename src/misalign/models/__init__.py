"""The model layer: one async interface for every backend, chosen by a model string.

- ``openai/<model>``: any OpenAI-compatible endpoint (:mod:`misalign.models.openai`);
- ``hf/<path-or-id>``: a local transformers model (:mod:`misalign.models.hf`, the ``[hf]`` extra);
- ``vllm/<path-or-id>``: the vLLM offline engine (:mod:`misalign.models.vllm`, the ``[vllm]`` extra);
- ``embedded`` (:data:`EMBEDDED`): the offline encoder (:mod:`misalign.models.embedded`). It is not a chat model:
  the judge (:mod:`misalign.bench.embedded_judge`) and the classifier (:mod:`misalign.build.embedded_classifier`)
  put trained heads on it, and their ``get_judge``/``get_classifier`` are the only places that pick it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from misalign.models.base import (
    CacheWriteError,
    ChatModel,
    Completion,
    GenerationParams,
    Message,
    ModelError,
    Request,
    Stop,
    TokenLogprob,
    complete_many,
)
from misalign.models.cache import CallCache
from misalign.redact import redact_url

__all__ = [
    "EMBEDDED", "CacheWriteError", "CallCache", "ChatModel", "Completion", "Endpoint", "GenerationParams",
    "Message", "ModelError", "ModelPool", "Request", "Stop", "TokenLogprob", "complete_many", "get_model",
]

EMBEDDED = "embedded"
"""The model string of the offline default."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach chat models: settings that never change an answer (so they stay out of result configs)."""

    base_urls: list[str] = field(default_factory=list)
    """OpenAI-compatible server URLs; requests spread over them (default: the OpenAI API)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (``none`` for servers without one)."""
    max_concurrency: int = 32
    """Requests in flight per model."""
    rpm: float | None = None
    """Requests-per-minute limit per model."""
    timeout: float = 120.0
    """Seconds per request attempt."""
    max_retries: int = 5
    """Retries of a failed request before it counts as failed."""

    def redacted(self) -> dict[str, Any]:
        """These settings for a manifest: URLs without credentials or query strings."""
        return {"base_urls": [redact_url(u) for u in self.base_urls], "api_key_env": self.api_key_env,
                "max_concurrency": self.max_concurrency, "rpm": self.rpm, "timeout": self.timeout,
                "max_retries": self.max_retries}


def get_model(spec: str, endpoint: Endpoint | None = None) -> ChatModel:
    """The chat model named by ``spec`` (see the module docstring)."""
    ep = endpoint or Endpoint()
    if spec.startswith("openai/"):
        from misalign.models.openai import OpenAIChatModel

        return OpenAIChatModel(spec.removeprefix("openai/"), base_urls=ep.base_urls, api_key_env=ep.api_key_env,
                               max_concurrency=ep.max_concurrency, rpm=ep.rpm, timeout=ep.timeout,
                               max_retries=ep.max_retries)
    if spec.startswith("hf/"):
        from misalign.models.hf import HFChatModel

        return HFChatModel(spec.removeprefix("hf/"), batch_size=max(1, min(ep.max_concurrency, 16)))
    if spec.startswith("vllm/"):
        from misalign.models.vllm import VLLMChatModel

        return VLLMChatModel(spec.removeprefix("vllm/"), max_concurrency=max(ep.max_concurrency, 256))
    if spec == EMBEDDED:
        raise ModelError("'embedded' is not a chat model: it judges and classifies directly (use it as --model "
                         "embedded for eval, or --classifier embedded for classify)")
    raise ModelError(f"unknown model {spec!r}: use openai/<model>, hf/<path-or-id>, vllm/<path-or-id> or embedded")


class ModelPool:
    """Chat models opened by name on first use with one :class:`Endpoint`, all closed together.

    ``async with ModelPool(endpoint) as pool: pool.get("openai/m")`` is how steps and commands hold models.
    """

    def __init__(self, endpoint: Endpoint | None = None) -> None:
        self.endpoint = endpoint or Endpoint()
        self._models: dict[str, ChatModel] = {}

    def get(self, spec: str) -> ChatModel:
        """The model named ``spec``, opened once."""
        if spec not in self._models:
            self._models[spec] = get_model(spec, self.endpoint)
        return self._models[spec]

    async def aclose(self) -> None:
        for m in self._models.values():
            await m.aclose()
        self._models.clear()

    async def __aenter__(self) -> ModelPool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
