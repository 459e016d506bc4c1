"""Counts of a dataset per split, dimension, semantic type and domain (``misalign data inspect``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from misalign.io.dataset import Dataset
from misalign.records import SEMANTIC_TYPES
from misalign.taxonomy import DIMENSIONS


def summarize(dataset: Dataset) -> dict[str, Any]:
    """Item counts: ``per_split``, ``per_dimension``, ``per_domain`` (name -> items), ``all_three``, and
    ``per_semantic_type`` (``object``, ``attribute``, ``relation``, and ``none`` for records without a type)."""
    per_split: Counter[str] = Counter()
    per_dim: Counter[str] = Counter()
    per_domain: Counter[str] = Counter()
    per_label: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
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
        per_type[getattr(r, "semantic_type", None) or "none"] += 1
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
        "per_semantic_type": {kind: per_type.get(kind, 0) for kind in (*SEMANTIC_TYPES, "none")},
        "per_label": dict(per_label),
    }
