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


def _pairs(n: int) -> list[Item]:
    """Two items per prompt (one per generator), ids ``<prompt id>~<generator>``, in an interleaved order."""
    out = [it.model_copy(update={"id": f"{it.id}~{g}", "provenance": {"prompt_id": it.id}})
           for g in ("g1", "g2") for it in _items(n)]
    return out


def test_a_group_goes_to_one_split_stratified_as_before():
    items = _pairs(100)
    prompt_of = lambda it: it.provenance["prompt_id"]  # noqa: E731
    splits = assign_splits(items, seed=2, group=prompt_of)
    by_prompt: dict[str, set[str]] = {}
    for it, s in zip(items, splits, strict=True):
        by_prompt.setdefault(prompt_of(it), set()).add(s)
    assert len(by_prompt) == 100 and all(len(s) == 1 for s in by_prompt.values())
    assert Counter(splits) == {"train": 160, "validation": 20, "test": 20}
    for split in ("train", "validation", "test"):
        dims = {d for it, s in zip(items, splits, strict=True) if s == split for d in it.domains.dimensions()}
        assert dims == {"safety", "value", "cultural"}, split
    ungrouped = assign_splits(items, seed=2)  # without the group the two items of a prompt often part
    assert any(len({s for it, s in zip(items, ungrouped, strict=True) if prompt_of(it) == p}) > 1 for p in by_prompt)


def test_groups_of_one_give_the_ungrouped_split():
    items = _items(120)
    for seed in range(3):
        assert assign_splits(items, seed=seed, group=lambda it: it.id) == assign_splits(items, seed=seed)
