from collections import Counter

from misalign.build.split import assign_splits
from misalign.records import Domains, Item


def _items(n: int) -> list[Item]:
    dims = ("safety", "value", "cultural")
    out = []
    for i in range(n):
        dom = {d: [] for d in dims}
        dom[dims[i % 3]] = [["Privacy violation", "Self-harm"], ["Health", "Wealth", "Honesty"],
                            ["TV", "Opera"]][i % 3][: 1 + i % 2]
        out.append(Item(id=f"i{i}", prompt=f"p{i}", aligned_response="a", misaligned_response="m",
                        domains=Domains(**dom)))
    return out


def test_sizes_are_80_10_10_and_seeded():
    items = _items(200)
    splits = assign_splits(items, seed=1)
    assert Counter(splits) == {"train": 160, "validation": 20, "test": 20}
    assert splits == assign_splits(items, seed=1)
    assert splits != assign_splits(items, seed=2)


def test_every_dimension_in_every_split():
    items = _items(60)
    splits = assign_splits(items, seed=0)
    for split in ("train", "validation", "test"):
        dims = {d for it, s in zip(items, splits, strict=True) if s == split for d in it.domains.dimensions()}
        assert dims == {"safety", "value", "cultural"}, split


def test_independent_of_input_order():
    items = _items(50)
    a = dict(zip([i.id for i in items], assign_splits(items, seed=3), strict=True))
    rev = items[::-1]
    b = dict(zip([i.id for i in rev], assign_splits(rev, seed=3), strict=True))
    assert a == b
