"""Counts of a dataset per split, dimension and domain (``misalign data inspect``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from misalign.io.dataset import Dataset
from misalign.taxonomy import DIMENSIONS


def summarize(dataset: Dataset) -> dict[str, Any]:
    """Item counts: ``per_split``, ``per_dimension``, ``per_domain`` (name -> items), ``all_three``."""
    per_split: Counter[str] = Counter()
    per_dim: Counter[str] = Counter()
    per_domain: Counter[str] = Counter()
    per_label: Counter[str] = Counter()
    all_three = 0
    for r in dataset.records:
        per_split[r.split or "unsplit"] += 1
        for dim in DIMENSIONS:
            names = r.domains.get(dim)
            if names:
                per_dim[dim] += 1
            per_domain.update(names)
        all_three += r.domains.all_three
        per_label[getattr(r, "label", "paired")] += 1
    return {
        "source": dataset.source,
        "shape": dataset.shape,
        "sha256": dataset.sha256,
        "items": len(dataset),
        "rejected": dataset.rejected,
        "per_split": dict(sorted(per_split.items())),
        "per_dimension": {dim: per_dim.get(dim, 0) for dim in DIMENSIONS},
        "per_domain": dict(sorted(per_domain.items(), key=lambda kv: (-kv[1], kv[0]))),
        "all_three": all_three,
        "per_label": dict(per_label),
    }
