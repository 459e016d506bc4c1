"""Stage I step 6: a seeded train/validation/test split, stratified by domain, optionally by groups."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from misalign.records import SPLITS, Domains, Item
from misalign.taxonomy import DIMENSIONS


class _HasDomains(Protocol):
    id: str
    domains: Domains | None


T = TypeVar("T", bound=_HasDomains)


def assign_splits(
    records: Sequence[T], *, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    group: Callable[[T], str] | None = None,
) -> list[str]:
    """Return a split name per record (in input order), stratified by each record's rarest domain.

    Records are grouped by their rarest domain (a record with none forms its own group), shuffled within
    groups with ``seed``, and laid end to end; walking that order, each record goes to the split furthest
    behind its target share (largest deficit ``ratio * seen - assigned``). Every stratum is thus spread over
    the splits in proportion and the totals are within one of ``ratios * len(records)``.

    With ``group`` (record -> key), the records of one key form one unit that goes to one split (no leakage, for
    example several items of one prompt): a unit is stratified by the rarest domain of its records, ordered by its
    key and advances the deficits by its size. Without it every record is its own unit (the same result as before
    groups existed).
    """
    if abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"split ratios must sum to 1, got {ratios}")
    units = _units(records, group)
    freq: Counter[str] = Counter()
    keys = []
    for _, members in units:
        labels = list(dict.fromkeys(lab for i in members for lab in _labels(records[i]))) if len(members) > 1 \
            else _labels(records[members[0]])
        freq.update(labels)
        keys.append(labels)
    rng = random.Random(seed)
    strata: dict[str, list[int]] = {}
    for u, labels in enumerate(keys):
        key = min(labels, key=lambda lab: (freq[lab], lab)) if labels else "~none"
        strata.setdefault(key, []).append(u)
    order: list[int] = []
    for key in sorted(strata, key=lambda k: (freq.get(k, 0), k)):
        members = sorted(strata[key], key=lambda u: units[u][0])
        rng.shuffle(members)
        order.extend(members)
    assigned = [0, 0, 0]
    out = [""] * len(records)
    seen = 0
    for u in order:
        size = len(units[u][1])
        seen += size
        deficits = [ratios[s] * seen - assigned[s] for s in range(3)]
        s = max(range(3), key=lambda k: (deficits[k], -k))
        assigned[s] += size
        for i in units[u][1]:
            out[i] = SPLITS[s]
    return out


def _units(records: Sequence[T], group: Callable[[T], str] | None) -> list[tuple[str, list[int]]]:
    """(sort key, record indices) of each unit that goes to one split, in order of first appearance."""
    if group is None:
        return [(r.id, [i]) for i, r in enumerate(records)]
    units: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        units.setdefault(group(r), []).append(i)
    return list(units.items())


def _labels(record: _HasDomains) -> list[str]:
    d = record.domains
    if d is None:
        return []
    return [f"{dim}:{name}" for dim in DIMENSIONS for name in d.get(dim)]


def prompt_group(record: _HasDomains) -> str:
    """The split group of a record: the ``prompt_id`` in its provenance (an item of ``respond --per-generator``),
    else its own id (a group of one: the ungrouped split, ids being unique)."""
    return (getattr(record, "provenance", None) or {}).get("prompt_id", record.id)


def split_items(items: Sequence[Item], *, seed: int = 0, group: Callable[[Item], str] | None = None) -> list[Item]:
    """The items with their ``split`` set by :func:`assign_splits` (copies; the input is not changed)."""
    names = assign_splits(items, seed=seed, group=group)
    return [it.model_copy(update={"split": name}) for it, name in zip(items, names, strict=True)]
