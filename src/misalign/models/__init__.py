"""The model layer: one async interface for every backend, chosen by a model string.

- ``openai/<model>``: any OpenAI-compatible endpoint (:mod:`misalign.models.openai`);
- ``hf/<path-or-id>``: a local transformers model (:mod:`misalign.models.hf`, the ``[hf]`` extra);
- ``vllm/<path-or-id>``: the vLLM offline engine (:mod:`misalign.models.vllm`, the ``[vllm]`` extra);
- ``embedded`` (:data:`EMBEDDED`): the offline encoder (:mod:`misalign.models.embedded`). It is not a chat model:
  the judge (:mod:`misalign.bench.embedded_judge`) and the classifier (:mod:`misalign.build.embedded_classifier`)
  put trained heads on it, and their ``get_judge``/``get_classifier`` are the only places that pick it by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from misalign.errors import ConfigError
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
    "EMBEDDED", "BaseUrls", "CacheWriteError", "CallCache", "ChatModel", "Completion", "Endpoint",
    "GenerationParams", "Message", "ModelError", "ModelPool", "Request", "Stop", "TokenLogprob", "complete_many",
    "get_model", "parse_base_urls", "redact_base_urls",
]

EMBEDDED = "embedded"
"""The model string of the offline default."""

BaseUrls = Sequence[str] | Mapping[str, str | Sequence[str]]
"""Servers as users give them: a list of ``URL`` (every model) and ``MODEL=URL`` items (one model's), or a table
model -> URL or list of URLs (the key ``*``: every model)."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach chat models: settings that never change an answer (so they stay out of result configs).

    ``Endpoint.with_urls(["http://a/v1", "judge=http://b/v1"])`` sends the judge to ``b`` and every other model to
    ``a``; :meth:`urls_for` says which servers a model uses.
    """

    base_urls: list[str] = field(default_factory=list)
    """OpenAI-compatible server URLs of every model without its own; requests spread over them (default: the
    OpenAI API)."""
    model_urls: dict[str, list[str]] = field(default_factory=dict)
    """One model's servers, keyed by its model string (``openai/judge``) or the bare name (``judge``); that model
    uses these instead of :attr:`base_urls`."""
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
    connect_wait: float = 120.0
    """Seconds a request keeps trying servers that refuse connections (a restart) before it counts as failed."""
    stream: bool = False
    """Ask OpenAI-compatible servers to stream answers, so a server stops generating a request we gave up on (the
    answer is the same, and so is its cache entry)."""

    @classmethod
    def with_urls(cls, urls: BaseUrls | None, **settings: Any) -> Endpoint:
        """The endpoint of ``urls`` as users give them (see :data:`BaseUrls`) and the other ``settings``."""
        shared, per_model = parse_base_urls(urls)
        return cls(base_urls=shared, model_urls=per_model, **settings)

    def urls_for(self, spec: str) -> list[str]:
        """The servers of model ``spec``: its own (under the model string or the bare name), else the shared ones."""
        bare = spec.removeprefix("openai/")
        own = [*self.model_urls.get(spec, []), *(self.model_urls.get(bare, []) if bare != spec else [])]
        return own or list(self.base_urls)

    def redacted(self) -> dict[str, Any]:
        """These settings for a manifest: URLs without credentials or query strings (``stream`` only when on)."""
        return {"base_urls": [redact_url(u) for u in self.base_urls],
                "model_urls": {m: [redact_url(u) for u in us] for m, us in self.model_urls.items()},
                "api_key_env": self.api_key_env, "max_concurrency": self.max_concurrency, "rpm": self.rpm,
                "timeout": self.timeout, "max_retries": self.max_retries, "connect_wait": self.connect_wait,
                **({"stream": True} if self.stream else {})}  # a run without it keeps the manifest it had


def _split_base_url(item: str) -> tuple[str | None, str]:
    """``MODEL=URL`` -> (MODEL, URL); anything else is a plain URL (its query string may hold ``=``) -> (None, URL)."""
    head, sep, tail = item.partition("=")
    if not sep or "://" in head or "://" not in tail:
        return None, item.strip()
    return head.strip(), tail.strip()


def _list_items(items: Sequence[str]) -> list[tuple[str | None, str]]:
    """(model or None for every model, URL) pairs of ``URL`` and ``MODEL=URL`` items."""
    pairs = [_split_base_url(str(item)) for item in items]
    for (model, _), item in zip(pairs, items, strict=True):
        if model == "":
            raise ConfigError(f"base URL {redact_base_urls([str(item)])[0]!r}: give URL or MODEL=URL")
    return pairs


def _table_items(table: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(model or None for ``*``, URL) pairs of a table model -> URL or list of URLs."""
    pairs: list[tuple[str | None, str]] = []
    for model, urls in table.items():
        listed = [urls] if isinstance(urls, str) else urls
        if not str(model).strip() or not isinstance(listed, Sequence) or not all(isinstance(u, str) for u in listed):
            raise ConfigError(f"base URLs of {model!r}: give a URL or a list of URLs")
        pairs += [(None if model == "*" else str(model).strip(), u.strip()) for u in listed]
    return pairs


def parse_base_urls(urls: BaseUrls | None) -> tuple[list[str], dict[str, list[str]]]:
    """(URLs of every model, model -> its own URLs) from ``urls`` as users give them (see :data:`BaseUrls`)."""
    if not urls:
        return [], {}
    if isinstance(urls, str):
        urls = [urls]
    pairs = _table_items(urls) if isinstance(urls, Mapping) else _list_items(urls)
    shared: list[str] = []
    per_model: dict[str, list[str]] = {}
    for model, url in pairs:
        if model is None:
            shared.append(url)
        else:
            per_model.setdefault(model, []).append(url)
    return shared, per_model


def redact_base_urls(urls: BaseUrls) -> list[str] | dict[str, Any]:
    """``urls`` as users give them, in the same shape, with every URL stripped of credentials and query strings."""
    if isinstance(urls, str):
        urls = [urls]
    if isinstance(urls, Mapping):
        return {k: redact_url(v) if isinstance(v, str) else [redact_url(str(u)) for u in v] for k, v in urls.items()}
    pairs = [_split_base_url(str(item)) for item in urls]
    return [redact_url(url) if model is None else f"{model}={redact_url(url)}" for model, url in pairs]


def get_model(spec: str, endpoint: Endpoint | None = None) -> ChatModel:
    """The chat model named by ``spec`` (see the module docstring)."""
    ep = endpoint or Endpoint()
    if spec.startswith("openai/"):
        from misalign.models.openai import OpenAIChatModel

        return OpenAIChatModel(spec.removeprefix("openai/"), base_urls=ep.urls_for(spec), api_key_env=ep.api_key_env,
                               max_concurrency=ep.max_concurrency, rpm=ep.rpm, timeout=ep.timeout,
                               max_retries=ep.max_retries, connect_wait=ep.connect_wait, stream=ep.stream)
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
    """Chat models opened by name on first use with one :class:`Endpoint` (each model on its own servers, see
    :meth:`Endpoint.urls_for`), all closed together.

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
