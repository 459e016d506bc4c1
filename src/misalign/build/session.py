"""How a Stage I step gets its models and call cache: one helper for the step commands and ``misalign build``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from misalign.models import CallCache, ModelPool

T = TypeVar("T")


def run_with_models(step: Callable[[CallCache | None], Awaitable[T]], *, pool: ModelPool,
                    cache_path: Path | None) -> T:
    """Run ``step(cache)`` to completion, then close every model of ``pool`` and the call cache.

    ``cache_path`` None runs the step without a cache (and writes no cache file).
    """
    async def run(cache: CallCache | None) -> T:
        async with pool:
            return await step(cache)

    if cache_path is None:
        return asyncio.run(run(None))
    with CallCache(cache_path) as cache:
        return asyncio.run(run(cache))
