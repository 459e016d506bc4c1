"""Stage I step 3: drop near-duplicate prompts (64-bit SimHash, Hamming distance <= tau; the first one kept)."""

from __future__ import annotations

import numpy as np

from misalign.build.simhash import dedup, fingerprints
from misalign.records import Prompt


def dedup_prompts(prompts: list[Prompt], tau: int, fps: np.ndarray | None = None) -> tuple[list[Prompt], list[Prompt]]:
    """Split prompts into kept and dropped near-duplicates, each carrying its SimHash fingerprint (``fps``: the
    prompts' fingerprints when already computed, e.g. on Ray)."""
    fps = fingerprints([p.prompt for p in prompts]) if fps is None else fps
    duplicate_of = dedup(fps, tau)
    kept, dropped = [], []
    for p, fp, d in zip(prompts, fps, duplicate_of, strict=True):
        if d < 0:
            kept.append(p.model_copy(update={"simhash": int(fp)}))
        else:
            dropped.append(p.model_copy(update={"simhash": int(fp), "duplicate_of": prompts[int(d)].id}))
    return kept, dropped
