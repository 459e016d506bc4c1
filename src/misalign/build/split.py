"""Stage I step 6: a seeded train/validation/test split, stratified by domain."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Protocol, TypeVar

from misalign.records import SPLITS, Domains, Item
from misalign.taxonomy import DIMENSIONS


class _HasDomains(Protocol):
    id: str
    domains: Domains | None


T = TypeVar("T", bound=_HasDomains)


def assign_splits(
    records: Sequence[T], *, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> list[str]:
    """Return a split name per record (in input order), stratified by each record's rarest domain.

    Records are grouped by their rarest domain (a record with none forms its own group), shuffled within
    groups with ``seed``, and laid end to end; walking that order, each record goes to the split furthest
    behind its target share (largest deficit ``ratio * seen - assigned``). Every stratum is thus spread over
    the splits in proportion and the totals are within one of ``ratios * len(records)``.
    """
    if abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"split ratios must sum to 1, got {ratios}")
    freq: Counter[str] = Counter()
    keys = []
    for r in records:
        labels = _labels(r)
        freq.update(labels)
        keys.append(labels)
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, labels in enumerate(keys):
        key = min(labels, key=lambda lab: (freq[lab], lab)) if labels else "~none"
        groups.setdefault(key, []).append(i)
    order: list[int] = []
    for key in sorted(groups, key=lambda k: (freq.get(k, 0), k)):
        members = sorted(groups[key], key=lambda i: records[i].id)
        rng.shuffle(members)
        order.extend(members)
    assigned = [0, 0, 0]
    out = [""] * len(records)
    for seen, i in enumerate(order, 1):
        deficits = [ratios[s] * seen - assigned[s] for s in range(3)]
        s = max(range(3), key=lambda k: (deficits[k], -k))
        assigned[s] += 1
        out[i] = SPLITS[s]
    return out


def _labels(record: _HasDomains) -> list[str]:
    d = record.domains
    if d is None:
        return []
    return [f"{dim}:{name}" for dim in DIMENSIONS for name in d.get(dim)]


def split_items(items: Sequence[Item], *, seed: int = 0) -> list[Item]:
    """The items with their ``split`` set by :func:`assign_splits` (copies; the input is not changed)."""
    return [it.model_copy(update={"split": name}) for it, name in zip(items, assign_splits(items, seed=seed),
                                                                       strict=True)]
