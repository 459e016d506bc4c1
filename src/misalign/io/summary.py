"""Counts of a dataset per split, dimension, semantic type and domain (``misalign data inspect``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from misalign.io.dataset import Dataset
from misalign.records import SEMANTIC_TYPES
from misalign.taxonomy import DIMENSIONS


def summarize(dataset: Dataset) -> dict[str, Any]:
    """Item counts: ``per_split``, ``per_dimension``, ``per_domain`` (name -> items), ``all_three``, and
    ``per_semantic_type`` (``object``, ``attribute``, ``relation``, and ``none`` for records without a type).

    Counted per distinct (split, label, semantic type, domains) of :meth:`Dataset.tally`, so a freshly loaded
    dataset is summarised from its columns without building its records."""
    per_split: Counter[str] = Counter()
    per_dim: Counter[str] = Counter()
    per_domain: Counter[str] = Counter()
    per_label: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
    all_three = 0
    for (split, label, kind, domains), n in dataset.tally().items():
        per_split[split or "unsplit"] += n
        for dim, names in zip(DIMENSIONS, domains, strict=True):
            if names:
                per_dim[dim] += n
                for name in names:
                    per_domain[name] += n
        all_three += n if all(domains) else 0
        per_label[label] += n
        per_type[kind or "none"] += n
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
