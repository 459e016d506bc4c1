"""Counts of a dataset per split, dimension, semantic type and domain (``misalign data inspect``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from misalign.io.dataset import Dataset
from misalign.records import SEMANTIC_TYPES, LabelledResponse
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
            names = getattr(r.domains, dim)
            if names:
                per_dim[dim] += 1
                for name in names:  # not Counter.update: its per-call checks cost more than the counting
                    per_domain[name] += 1
        all_three += r.domains.all_three
        labelled = isinstance(r, LabelledResponse)  # getattr with a default is slow on a model that lacks the field
        per_label[r.label if labelled else "paired"] += 1
        per_type[(None if labelled else r.semantic_type) or "none"] += 1
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
