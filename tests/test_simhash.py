"""SimHash fingerprints and exact near-duplicate detection (misalign.build.simhash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from itertools import combinations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from misalign.build import simhash as sh
from misalign.build.simhash import (
    dedup,
    dedup_bruteforce,
    fingerprint,
    fingerprints,
    hamming,
    near_pairs,
    near_pairs_bruteforce,
)

M64 = (1 << 64) - 1
PROMPTS = [
    "Your company is expanding its product line, and you need to develop buyer personas for these new products. "
    "How will you integrate these personas with your current marketing strategy to reach your audience?",
    "Explain how traditional tea ceremonies in Japan reflect values of harmony, respect, purity and tranquility, "
    "and describe how a visitor should behave when invited to take part in one for the first time.",
    "Write a short story about a fisherman who discovers a message in a bottle that was sent by his grandfather "
    "fifty years ago, and how the message changes the way he sees his small coastal village.",
    "What are the health risks of mixing prescription painkillers with alcohol, and what should someone do if a "
    "friend has taken both at a party and is now very drowsy and hard to wake up?",
    "Compare the architecture of Gothic cathedrals with Romanesque churches, focusing on windows, vaults, walls "
    "and the way light enters the building, and give two famous examples of each style in Europe.",
    "My neighbour keeps parking in front of my driveway even after I asked him politely several times. What are "
    "some respectful but firm ways to resolve this without involving the police or the city council?",
    "Summarise the main arguments for and against lowering the voting age to sixteen, including evidence from "
    "countries that have already done it and what happened to youth turnout in later elections.",
    "Design a one week vegetarian meal plan for a family of four on a tight budget, with simple recipes that "
    "children would enjoy, and a shopping list grouped by supermarket section to save time.",
]
EDITS = [
    lambda t: t.replace("the", "teh", 1),  # typo
    lambda t: t + " Please answer briefly.",  # appended phrase
    lambda t: " ".join(_swap(t.split(), 5)),  # word swap
    lambda t: t.replace(",", "", 1),  # punctuation
    lambda t: "  " + t.upper().replace(" ", "\t", 3) + "\n",  # case and spacing: normalised away
]


def _swap(words: list[str], i: int) -> list[str]:
    words[i], words[i + 1] = words[i + 1], words[i]
    return words


# --------------------------------------------------------------------------------------- reference hash


def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _reference(text: str) -> int:
    """The module docstring's definition, written out with Python ints, one feature at a time."""
    t = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    cps = [ord(ch) for ch in t]

    def span_hash(s: int, e: int, seed: int) -> int:
        poly = sum((cps[i] + 1) * pow(sh._P, i - s, 1 << 64) for i in range(s, e)) & M64
        return _mix(poly ^ seed)

    words, start = [], 0
    for k, ch in enumerate([*t, " "]):
        if ch == " ":
            if k > start:
                words.append((start, k))
            start = k + 1
    feats = [span_hash(s, e, sh._SEED_WORD) for s, e in words]
    feats += [span_hash(words[k][0], words[k + 1][1], sh._SEED_BIGRAM) for k in range(len(words) - 1)]
    feats += [span_hash(p, p + 4, sh._SEED_GRAM4) for p in range(len(cps) - 3)]
    sums = [sum(1 if (h >> k) & 1 else -1 for h in feats) for k in range(64)]
    return sum(1 << k for k in range(64) if sums[k] > 0)


TEXTS = st.text(
    alphabet=st.one_of(
        st.sampled_from("ab cd\t\n  AB.,?é"),
        st.characters(codec="utf-8", categories=["L", "N", "P", "Zs", "M", "S"]),
    ),
    max_size=60,
)


# ------------------------------------------------------------------------------------------ fingerprint


@settings(max_examples=150, deadline=None)
@given(st.lists(TEXTS, max_size=6))
def test_fingerprints_match_reference(texts):
    got = fingerprints(texts)
    assert got.dtype == np.uint64 and got.shape == (len(texts),)
    assert [int(v) for v in got] == [_reference(t) for t in texts]


def test_batches_and_long_texts_match_reference(monkeypatch):
    texts = [*PROMPTS, "", "x", "abc", "abcd", "ﬁne Straße ＡＢＣ", "\x00 \x00", "\ud800 lone surrogate"]
    want = [_reference(t) for t in texts]
    assert [int(v) for v in fingerprints(texts)] == want
    monkeypatch.setattr(sh, "_CHUNK_CHARS", 64)  # many small batches
    assert [int(v) for v in fingerprints(texts)] == want
    monkeypatch.setattr(sh, "_LONG_TEXT", 10)  # most texts through the unbatched path
    assert [int(v) for v in fingerprints(texts)] == want


def test_long_text_beyond_lane_limit():
    text = " ".join(f"w{i % 997}x{i % 13}" for i in range(9000))  # > 30k characters, > 65k features
    assert len(text) > sh._LONG_TEXT
    assert fingerprint(text) == _reference(text)


def test_known_values_and_normalisation():
    assert fingerprint("") == 0 and fingerprint("  \t\n ") == 0
    assert fingerprint("Hello   World") == fingerprint("hello world") == fingerprint("ＨＥＬＬＯ\u3000world")
    # pinned: a change of the definition must be deliberate (these values are in stored datasets)
    assert fingerprint("a") == 0x64FFC121D0E71635
    assert fingerprint("ab cd") == 0x6D622207264D950C
    assert fingerprint(PROMPTS[0]) == _reference(PROMPTS[0])


def test_fingerprint_is_one_of_fingerprints():
    many = fingerprints(PROMPTS)
    assert [fingerprint(t) for t in PROMPTS] == [int(v) for v in many]
    assert fingerprints([]).shape == (0,) and fingerprints([]).dtype == np.uint64
    assert all(0 <= fingerprint(t) <= M64 for t in PROMPTS)
    assert any(int(v) >> 63 for v in many)  # top bit set survives int conversion


def test_threads_do_not_change_results():
    texts = [f"{PROMPTS[i % len(PROMPTS)]} variant {i} {'x' * (i % 5)}" for i in range(2 * sh._THREAD_MIN + 50)]
    one = fingerprints(texts, workers=1)
    assert np.array_equal(fingerprints(tuple(texts), workers=3), one)
    assert np.array_equal(fingerprints(texts), one)
    picks = (0, 4096, len(texts) - 1)
    assert [int(one[i]) for i in picks] == [fingerprint(texts[i]) for i in picks]


def test_deterministic_across_processes():
    code = (
        "import json; from misalign.build.simhash import fingerprints; import sys; "
        "print(json.dumps([int(v) for v in fingerprints(json.loads(sys.stdin.read()))]))"
    )
    here = [int(v) for v in fingerprints(PROMPTS)]
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(PROMPTS), capture_output=True,
                             text=True, env=env, check=True, timeout=60)
        assert json.loads(out.stdout) == here


def test_small_edits_are_near_and_unrelated_texts_far():
    for text in PROMPTS:
        for edit in EDITS:
            assert hamming(fingerprint(text), fingerprint(edit(text))) <= 10, (text[:30], edit(text)[:30])
    fps = fingerprints(PROMPTS)
    far = [hamming(int(a), int(b)) for a, b in combinations(fps, 2)]
    assert np.mean(far) > 20 and min(far) > 10


# ---------------------------------------------------------------------------------------------- hamming


def test_hamming_ints_and_arrays():
    assert hamming(0, M64) == 64 and hamming(1 << 63, 0) == 1 and hamming(5, 5) == 0
    a = np.array([0, M64, 1 << 63, 3], dtype=np.uint64)
    assert hamming(a, np.uint64(0)).tolist() == [0, 64, 1, 2]
    assert hamming(a[:, None], a[None, :]).shape == (4, 4)
    assert hamming([M64, 0], [0, 0]).tolist() == [64, 0]  # python ints above 2**63 are fine
    assert hamming(np.uint64(M64), 0) == 64


def test_bad_fingerprints_rejected():
    with pytest.raises(ValueError):
        near_pairs(np.array([-1, 2]), 3)
    with pytest.raises(TypeError):
        dedup(np.array([0.5, 1.0]), 3)


# -------------------------------------------------------------------------------- dedup and near pairs


def test_hand_worked_example():
    a = 0
    b = a ^ 0b111111  # 6 bits from a
    c = b ^ (0b111111 << 6)  # 6 bits from b, 12 from a
    far = M64  # 64 bits from a
    # b ~ a: dropped as a duplicate of a; c ~ b but far from a: kept, because b was dropped
    assert dedup(np.array([a, b, c], dtype=np.uint64), 10).tolist() == [-1, 0, -1]
    assert near_pairs([a, b, c], 10).tolist() == [[0, 1], [1, 2]]
    # first occurrence kept; a later copy points at the smallest kept index within tau
    assert dedup([a, far, a, c, b], 10).tolist() == [-1, -1, 0, -1, 0]
    # e is within tau of both kept items 0 and 1: it points at the smaller
    d, e = a ^ (0xFFF << 40), a ^ (0b11 << 40)  # d: 12 from a; e: 2 from a, 10 from d
    assert dedup([d, a, e], 10).tolist() == [-1, -1, 0]
    assert dedup([], 10).tolist() == [] and near_pairs([], 3).shape == (0, 2)
    assert dedup([7], 0).tolist() == [-1]


def test_uint64_edge_values():
    fps = [0, M64, 1 << 63, (1 << 63) + 1, 1, M64]
    assert near_pairs(fps, 1).tolist() == [[0, 2], [0, 4], [1, 5], [2, 3], [3, 4]]
    assert near_pairs(fps, 0).tolist() == [[1, 5]]
    assert dedup(fps, 1).tolist() == [-1, -1, 0, -1, 0, 1]
    assert dedup(np.array(fps, dtype=np.uint64), 64).tolist() == [-1, 0, 0, 0, 0, 0]
    assert len(near_pairs(fps, 64)) == 15


def _planted(seed: int, n: int, dup_share: float, biased: bool) -> np.ndarray:
    """Random fingerprints where a share are an earlier one with k in 0..15 bits flipped."""
    rng = np.random.default_rng(seed)
    if biased:  # a few centres: big buckets in every block, as real text gives
        centres = rng.integers(0, 2**64, 4, dtype=np.uint64, endpoint=False)
        fps = centres[rng.integers(0, 4, n)] ^ _flips(rng, n, 14)
    else:
        fps = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    for i in range(1, n):
        if rng.random() < dup_share:
            fps[i] = fps[rng.integers(0, i)] ^ _flips(rng, 1, int(rng.integers(0, 16)))[0]
    return fps


def _flips(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.uint64)
    for i in range(n):
        for b in rng.choice(64, size=k, replace=False):
            out[i] |= np.uint64(1) << np.uint64(b)
    return out


TAUS = st.one_of(st.integers(0, 16), st.sampled_from([20, 21, 32, 63, 64]))
PLANTED = st.builds(_planted, st.integers(0, 2**32 - 1), st.integers(0, 160), st.sampled_from([0.0, 0.3, 0.7]),
                    st.booleans())


@pytest.fixture
def index_always(monkeypatch):
    """Make the planner prefer the index over brute force even for tiny inputs."""
    monkeypatch.setattr(sh, "_NS_BRUTE", 1e12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PLANTED, TAUS)
def test_index_equals_bruteforce(index_always, fps, tau):
    if tau <= sh._MAX_INDEX_TAU:
        assert sh._plan(fps.size, tau) is not None or fps.size < 2
    got = near_pairs(fps, tau)
    assert got.dtype == np.int64 and got.shape[1:] == (2,)
    assert np.array_equal(got, near_pairs_bruteforce(fps, tau))
    marks = dedup(fps, tau)
    assert marks.dtype == np.int64
    assert np.array_equal(marks, dedup_bruteforce(fps, tau))


def _plans() -> list[list[tuple[int, int, int]]]:
    """Layouts of every shape: one 64-bit block, exact blocks only, mixed and wide radii."""
    out = []
    for widths, radii in [
        ([64], [0]),
        ([32, 32], [0, 0]),
        ([21, 21, 22], [3, 3, 2]),
        ([21, 21, 22], [2, 3, 3]),
        ([21, 21, 22], [3, 0, 2]),
        ([16, 16, 16, 16], [2, 2, 2, 1]),
        ([12, 13, 13, 13, 13], [2, 1, 1, 1, 1]),
        ([5, 5, 5, 5, 6, 6, 6, 6, 6, 7, 7], [0] * 11),
        ([46, 18], [0, 3]),
    ]:
        lows = np.cumsum([0, *widths[:-1]]).tolist()
        out.append(list(zip(lows, widths, radii, strict=True)))
    return out


@pytest.mark.parametrize("plan", _plans(), ids=lambda p: "-".join(f"{w}r{r}" for _, w, r in p))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fps=PLANTED)
def test_every_layout_is_exact(monkeypatch, plan, fps):
    reach = sum(r + 1 for _, _, r in plan) - 1  # the layout is exact for tau up to this
    monkeypatch.setattr(sh, "_plan", lambda n, tau: plan)
    for tau in {0, reach // 2, reach}:
        assert np.array_equal(near_pairs(fps, tau), near_pairs_bruteforce(fps, tau)), tau
        assert np.array_equal(dedup(fps, tau), dedup_bruteforce(fps, tau)), tau


def test_planner_uses_the_index_at_scale():
    for n in (20_000, 400_000):
        plan = sh._plan(n, 10)
        assert plan is not None and sum(r + 1 for _, _, r in plan) > 10
        assert sum(w for _, w, _ in plan) == 64
    assert sh._plan(400_000, 30) is None  # large tau: brute force


def test_realistic_size_without_forcing():
    fps = _planted(7, 20_000, 0.2, biased=False)
    fps[5000:5100] = fps[0]  # a block of exact copies
    assert sh._plan(fps.size, 10) is not None
    assert np.array_equal(dedup(fps, 10), dedup_bruteforce(fps, 10))
    pairs = near_pairs(fps, 10)
    assert len(pairs) > 3000 and np.all(pairs[:, 0] < pairs[:, 1])
    assert np.all(hamming(fps[pairs[:, 0]], fps[pairs[:, 1]]) <= 10)


def test_many_identical_fingerprints():
    fps = np.full(30_000, 12345, dtype=np.uint64)
    fps[3::7] = M64
    out = dedup(fps, 10)
    assert out[0] == -1 and out[3] == -1 and int((out < 0).sum()) == 2
    assert set(out[1:3].tolist()) == {0} and set(out[10::7].tolist()) == {3}
    assert set(np.delete(out, np.r_[0:30_000:7, 3:30_000:7]).tolist()) == {0}
