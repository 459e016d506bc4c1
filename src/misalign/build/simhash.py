"""64-bit SimHash fingerprints and exact near-duplicate detection (Hamming distance <= tau).

Fingerprint (deterministic, independent of ``PYTHONHASHSEED`` and of the platform):

1. Normalise: Unicode NFKC, ``str.casefold``, whitespace runs collapsed to one space, ends stripped
   (``" ".join(nfkc(text).casefold().split())``). Let ``c_0 .. c_{L-1}`` be its code points.
2. Features, each occurrence with weight 1 (so a feature's weight is its count): every word (maximal run
   without a space), every two consecutive words (the span ``"w1 w2"``), and every character 4-gram of the
   normalised text, spaces included. A text of fewer than 4 characters has no 4-grams; an empty text has no
   features and fingerprint 0.
3. Feature hash of a span ``c_s .. c_{e-1}`` of type ``t``: ``mix64(poly ^ SEED[t])`` with
   ``poly = sum_i (c_{s+i} + 1) * P**i mod 2**64``, ``P = 0x9E3779B97F4A7C15`` and ``mix64`` the SplitMix64
   finaliser (``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB;
   x ^= x >> 31``, all mod 2**64). ``SEED`` = ``_SEED_WORD``, ``_SEED_BIGRAM``, ``_SEED_GRAM4`` below.
4. Bit ``k`` of the fingerprint is 1 iff ``sum_f (+1 if bit k of hash(f) else -1) > 0`` over the features.

Everything is vectorised with numpy over a batch: the polynomial hash of any span comes from one prefix sum
(``(G[e] - G[s]) * P**-s``), and per-text bit counts from sixteen passes over 16-bit lanes packed into
uint64 words. Large inputs are split over threads (numpy releases the GIL).

Near-duplicates (:func:`near_pairs`, :func:`dedup`) are found exactly with multi-index hashing: the 64 bits
are cut into ``m`` blocks with radii ``r_b`` such that ``sum(r_b + 1) > tau``; two fingerprints within
distance ``tau`` then differ in at most ``r_b`` bits of some block ``b`` (pigeonhole). Per block, items are
sorted by their block key; pairs in one bucket, and pairs of buckets whose keys differ in 1..r_b bits (found
by probing a direct-address table, or a binary search when keys are sparse), are candidates, and each
candidate's full distance is checked. A pair is reported by the first block that finds it. The layout (for
tau = 10 and a few hundred thousand texts, 4 blocks of 16 bits with radii 1, 2, 2, 2) comes from a cost
model fitted on real prompts; brute force is used where it is cheaper (small inputs, tau > 20). Results equal
:func:`near_pairs_bruteforce` and :func:`dedup_bruteforce` exactly for every tau.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import combinations
from math import comb
from typing import Any, overload

import numpy as np

__all__ = [
    "dedup",
    "dedup_bruteforce",
    "fingerprint",
    "fingerprints",
    "hamming",
    "near_pairs",
    "near_pairs_bruteforce",
]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15
_P_INV = pow(_P, -1, 1 << 64)
_SEED_WORD = 0x243F6A8885A308D3
_SEED_BIGRAM = 0x13198A2E03707344
_SEED_GRAM4 = 0xA4093822299F31D0
_LANES = _U64(0x0001000100010001)
_CHUNK_CHARS = 1 << 19  # code points hashed per batch (bounds memory)
_LONG_TEXT = 30_000  # texts longer than this are counted without the 16-bit lane trick
_THREAD_MIN = 4096  # fewest texts per thread task

# ----------------------------------------------------------------------------------------------- popcount

if hasattr(np, "bitwise_count"):

    def _popcount(x: np.ndarray) -> np.ndarray:
        """Bits set in each uint64 (uint8 result)."""
        return np.bitwise_count(x)

else:  # numpy < 2
    _POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:
        """Bits set in each uint64 (uint8 result), by a 16-bit lookup table."""
        x = np.ascontiguousarray(x, dtype=_U64)
        parts = x.view(np.uint16).reshape(*x.shape, 4)
        return _POP16[parts].sum(axis=-1, dtype=np.uint8)


@overload
def hamming(a: int, b: int) -> int: ...
@overload
def hamming(a: Any, b: Any) -> np.ndarray: ...
def hamming(a: Any, b: Any) -> int | np.ndarray:
    """Hamming distance (popcount of xor) of two fingerprints or broadcastable uint64 arrays."""
    if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
        return (int(a) ^ int(b)).bit_count()
    x = np.bitwise_xor(_as_u64(a), _as_u64(b))
    return _popcount(x).astype(np.int64)


def _as_u64(x: Any) -> np.ndarray:
    """uint64 array from ints or an integer array, rejecting values outside [0, 2**64)."""
    arr = x if isinstance(x, np.ndarray) else np.array(x, dtype=object)
    if arr.dtype == _U64:
        return arr
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError("fingerprints must be in [0, 2**64)")
        return arr.astype(_U64)
    if arr.dtype != object:
        raise TypeError(f"fingerprints must be integers, got dtype {arr.dtype}")
    values = arr.ravel().tolist()
    for v in values:
        if not isinstance(v, int | np.integer) or isinstance(v, bool):
            raise TypeError(f"fingerprints must be integers, got {type(v).__name__}")
        if not 0 <= v <= _MASK64:
            raise ValueError(f"fingerprints must be in [0, 2**64), got {v}")
    return np.array(values, dtype=_U64).reshape(arr.shape)


# -------------------------------------------------------------------------------------------- fingerprint


def _normalise(text: str) -> str:
    """NFKC, casefold, collapse whitespace."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, in place on a uint64 array (wraps mod 2**64)."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``P**i`` and ``P**-i`` mod 2**64 for i < n (from a cached table whose size is the next power of two)."""
    pw, ipw = _power_table(max(1, n - 1).bit_length())
    return pw[:n], ipw[:n]


@cache
def _power_table(log2_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``P**i`` and ``P**-i`` mod 2**64 for i < 2**log2_size."""
    size = 1 << log2_size
    pw = np.full(size, _P, dtype=_U64)
    pw[0] = 1
    np.cumprod(pw, out=pw)
    ipw = np.full(size, _P_INV, dtype=_U64)
    ipw[0] = 1
    np.cumprod(ipw, out=ipw)
    return pw, ipw


def _span_hashes(g: np.ndarray, ipw: np.ndarray, s: np.ndarray, e: np.ndarray, seed: int) -> np.ndarray:
    """Feature hashes of spans [s, e) given the prefix sums ``g``."""
    h = g[e] - g[s]
    h *= ipw[s]
    h ^= _U64(seed)
    return _mix64(h)


def _add_lanes(acc: np.ndarray, h: np.ndarray, doc: np.ndarray, n: int) -> None:
    """Add per-document bit counts of hashes ``h`` (doc ids ``doc``, ascending) into 16-bit lanes ``acc``.

    ``acc[d, j]`` holds, in lane ``l`` (bits 16l..16l+15), the count of features of doc d with bit 16l+j set.
    Lane sums are exact while a document has fewer than 65536 features.
    """
    if h.size == 0:
        return
    counts = np.bincount(doc, minlength=n)
    nz = np.flatnonzero(counts)
    starts = np.concatenate(([0], np.cumsum(counts[nz])[:-1]))
    lanes = np.empty_like(h)
    for j in range(16):
        np.right_shift(h, _U64(j), out=lanes)
        lanes &= _LANES
        acc[nz, j] += np.add.reduceat(lanes, starts)


def _fingerprint_batch(texts: list[str]) -> np.ndarray:
    """Fingerprints of normalised texts, each shorter than ``_LONG_TEXT`` code points."""
    n = len(texts)
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    joined = " ".join(texts) + " "  # one space after each text: words end at spaces
    c = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    size = c.size
    pw, ipw = _powers(size + 1)
    g = np.empty(size + 1, dtype=_U64)
    g[0] = 0
    vals = c.astype(_U64)
    vals += _U64(1)
    vals *= pw[:size]
    np.cumsum(vals, out=g[1:])
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1] + 1, out=starts[1:])
    acc = np.zeros((n, 16), dtype=_U64)
    total = np.zeros(n, dtype=np.int64)

    # character 4-grams within each text
    n4 = np.maximum(lens - 3, 0)
    doc4 = np.repeat(np.arange(n), n4)
    first4 = np.cumsum(n4) - n4
    s4 = np.arange(doc4.size, dtype=np.int64) + (starts - first4)[doc4]
    _add_lanes(acc, _span_hashes(g, ipw, s4, s4 + 4, _SEED_GRAM4), doc4, n)
    total += n4

    # words: runs between spaces (the separator after each text is a space too)
    sp = np.flatnonzero(c == 32)
    ws = np.empty(sp.size, dtype=np.int64)
    ws[0] = 0
    ws[1:] = sp[:-1] + 1
    keep = sp > ws
    ws, we = ws[keep], sp[keep]
    docw = np.searchsorted(starts, ws, side="right") - 1
    _add_lanes(acc, _span_hashes(g, ipw, ws, we, _SEED_WORD), docw, n)
    total += np.bincount(docw, minlength=n)

    # bigrams: two consecutive words of one text
    pair = np.flatnonzero(docw[1:] == docw[:-1])
    docb = docw[pair]
    _add_lanes(acc, _span_hashes(g, ipw, ws[pair], we[pair + 1], _SEED_BIGRAM), docb, n)
    total += np.bincount(docb, minlength=n)

    bits = np.empty((n, 64), dtype=np.int64)
    for lane in range(4):
        bits[:, 16 * lane : 16 * lane + 16] = (acc >> _U64(16 * lane)) & _U64(0xFFFF)
    return _pack(2 * bits > total[:, None])


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) booleans, column k = bit k, to uint64."""
    packed = np.packbits(bits, axis=1, bitorder="little")
    return packed.view("<u8").reshape(-1).astype(_U64)


def _fingerprint_long(text: str) -> int:
    """Fingerprint of one normalised text of any length (bit counts without the lane limit)."""
    c = np.frombuffer((text + " ").encode("utf-32-le", "surrogatepass"), dtype="<u4")
    size = c.size
    pw, ipw = _powers(size + 1)
    g = np.empty(size + 1, dtype=_U64)
    g[0] = 0
    np.cumsum((c.astype(_U64) + _U64(1)) * pw[:size], out=g[1:])
    sp = np.flatnonzero(c == 32)
    ws = np.concatenate(([0], sp[:-1] + 1))
    keep = sp > ws
    ws, we = ws[keep], sp[keep]
    s4 = np.arange(max(len(text) - 3, 0))
    parts = [
        (s4, s4 + 4, _SEED_GRAM4),
        (ws, we, _SEED_WORD),
        (ws[:-1], we[1:], _SEED_BIGRAM),
    ]
    ones = np.zeros(64, dtype=np.int64)
    total = 0
    for s, e, seed in parts:
        for lo in range(0, s.size, 1 << 16):
            h = _span_hashes(g, ipw, s[lo : lo + (1 << 16)], e[lo : lo + (1 << 16)], seed)
            ones += np.unpackbits(h.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1, bitorder="little").sum(
                axis=0, dtype=np.int64
            )
            total += h.size
    return int(_pack((2 * ones > total)[None, :])[0])


def fingerprints(texts: Sequence[str], *, workers: int | None = None) -> np.ndarray:
    """64-bit SimHash of each text (uint64 array, in input order); see the module docstring.

    Large inputs are hashed in slices on ``workers`` threads (default: the usable CPUs, at most 8); numpy
    releases the GIL for the heavy steps. The result does not depend on ``workers``.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    workers = _default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(texts) < 2 * _THREAD_MIN:
        return _fingerprints_serial(texts)
    step = max(_THREAD_MIN, -(-len(texts) // (4 * workers)))
    slices = [texts[i : i + step] for i in range(0, len(texts), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(_fingerprints_serial, slices)))


def _default_workers() -> int:
    """Usable CPUs, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def _fingerprints_serial(texts: list[str]) -> np.ndarray:
    """Fingerprints on the calling thread, in batches of about ``_CHUNK_CHARS`` code points."""
    norm = [_normalise(t) for t in texts]
    out = np.zeros(len(norm), dtype=_U64)
    batch: list[str] = []
    where: list[int] = []
    chars = 0

    def flush() -> None:
        if batch:
            out[where] = _fingerprint_batch(batch)
            batch.clear()
            where.clear()

    for i, t in enumerate(norm):
        if len(t) > _LONG_TEXT:
            out[i] = _fingerprint_long(t)
            continue
        batch.append(t)
        where.append(i)
        chars += len(t) + 1
        if chars >= _CHUNK_CHARS:
            flush()
            chars = 0
    flush()
    return out


def fingerprint(text: str) -> int:
    """64-bit SimHash of one text, an int in [0, 2**64)."""
    return int(fingerprints([text])[0])


# ------------------------------------------------------------------------------------------- brute force


def near_pairs_bruteforce(fps: Any, tau: int) -> np.ndarray:
    """All pairs i < j with hamming <= tau, sorted (O(n^2) reference, one numpy pass per row)."""
    fps = _as_u64(fps).ravel()
    out = []
    for i in range(fps.size - 1):
        d = _popcount(fps[i + 1 :] ^ fps[i])
        js = np.flatnonzero(d <= tau) + (i + 1)
        if js.size:
            out.append(np.stack([np.full(js.size, i), js], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.empty((0, 2), dtype=np.int64)


def dedup_bruteforce(fps: Any, tau: int = 10) -> np.ndarray:
    """Greedy near-duplicate marks (see :func:`dedup`) by comparing each kept item with all later ones."""
    fps = _as_u64(fps).ravel()
    dup = np.full(fps.size, -1, dtype=np.int64)
    for i in range(fps.size):
        if dup[i] >= 0:
            continue
        d = _popcount(fps[i + 1 :] ^ fps[i])
        js = np.flatnonzero(d <= tau) + (i + 1)
        js = js[dup[js] < 0]
        dup[js] = i
    return dup


# ------------------------------------------------------------------------------------------------- index

_CAND_CHUNK = 1 << 15  # items per numpy pass: small enough to stay in cache
_MAX_TABLE_BITS = 24  # widest block probed at a radius > 0
_DENSE = 64  # direct-address tables when 2**w <= _DENSE * distinct keys, else binary search
_MAX_INDEX_TAU = 20  # above this brute force always wins
# Cost model (nanoseconds per unit, fitted on a 2-core x86 box with real SimHash keys) that picks the layout.
_NS_BRUTE = 1.5  # per pair compared by brute force
_NS_ITEM = 150.0  # per item and block: keys, sort, runs
_NS_PROBE = 12.0  # per probe of a neighbouring key in a direct-address table
_NS_SEARCH = 35.0  # per probe by binary search (sparse keys)
_NS_HIT = 45.0  # per probe that finds an occupied bucket
_NS_CAND = 4.6  # per candidate pair verified
_SKEW = 1.08  # per block bit: SimHash keys of real text collide more often than uniform ones (~1.08**w)


@cache
def _ball(w: int, r: int) -> int:
    """Number of w-bit words within Hamming distance r of a given one."""
    return sum(comb(w, k) for k in range(min(r, w) + 1))


def _widths(m: int) -> list[int]:
    """64 bits cut into m contiguous blocks, as equal as possible (wider blocks last)."""
    return [64 // m + (b >= m - 64 % m) for b in range(m)]


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of ``parts`` non-negative ints summing to ``total``."""
    for cut in combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *cut, total + parts - 1)
        yield tuple(edges[k + 1] - edges[k] - 1 for k in range(parts))


@cache
def _block_cost(n: int, w: int, r: int) -> float:
    """Modelled nanoseconds for one block of width w probed at radius r over n distinct fingerprints."""
    if r > 0 and w > _MAX_TABLE_BITS:
        return float("inf")
    ball = _ball(w, r)
    cands = n * (n - 1) / 2 * min(1.0, ball / 2**w * _SKEW**w)
    probes = (ball - 1) * n / 2
    hits = min(cands, probes * min(1.0, 2 * n / 2**w))
    per_probe = _NS_PROBE if 2**w <= _DENSE * n else _NS_SEARCH
    return n * _NS_ITEM + probes * per_probe + hits * _NS_HIT + cands * _NS_CAND


def _plan(n: int, tau: int) -> list[tuple[int, int, int]] | None:
    """Blocks (low bit, width, radius) with ``sum(radius + 1) > tau``, or None when brute force is cheaper.

    Tries 1..8 near-equal blocks with every split of the radius budget (evenly for more than 4 blocks) and keeps
    the layout of least modelled cost.
    """
    if tau > _MAX_INDEX_TAU:
        return None
    best: tuple[float, list[tuple[int, int, int]]] | None = None
    for m in range(1, min(tau + 1, 8) + 1):
        widths = _widths(m)
        spare = tau + 1 - m
        radii_options = _compositions(spare, m) if m <= 4 else [_even(spare, m)]
        for radii in radii_options:
            cost = sum(_block_cost(n, w, r) for w, r in zip(widths, radii, strict=True))
            if best is None or cost < best[0]:
                lows = np.cumsum([0, *widths[:-1]])
                best = (cost, [(int(lo), w, r) for lo, w, r in zip(lows, widths, radii, strict=True)])
    if best is None or best[0] >= n * (n - 1) / 2 * _NS_BRUTE:
        return None
    return best[1]


def _even(total: int, parts: int) -> tuple[int, ...]:
    """``total`` spread over ``parts`` as evenly as possible (larger shares first)."""
    return tuple(total // parts + (k < total % parts) for k in range(parts))


def _masks_by_top_bit(w: int, r: int) -> list[np.ndarray]:
    """Per bit h < w, all w-bit masks with 1..r bits set whose highest set bit is h."""
    out = []
    for h in range(w):
        low = [sum(1 << b for b in c) for k in range(min(r, h + 1)) for c in combinations(range(h), k)]
        out.append(np.array(low, dtype=np.intp) | (1 << h))
    return out


def _chunks(counts: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive index ranges whose ``counts`` sum to about ``limit`` (one oversized entry stays alone)."""
    if counts.size == 0:
        return
    cum = np.cumsum(counts)
    ends = np.searchsorted(cum, np.arange(limit, int(cum[-1]), limit), side="left") + 1
    start = 0
    for end in [*np.unique(ends).tolist(), counts.size]:
        if end > start:
            yield start, end
            start = end


class _Block:
    """One block of the multi-index: bits ``lo .. lo + w - 1`` as key, probed at radius ``r``; items by key."""

    def __init__(self, fps: np.ndarray, lo: int, w: int, r: int) -> None:
        self.lo, self.w, self.r = lo, w, r
        keys = (fps >> _U64(lo)) & _U64((1 << w) - 1) if w < 64 else fps.copy()
        self.order = np.argsort(keys, kind="stable")
        self.sorted_fps = fps[self.order]
        self.sorted_keys = keys[self.order]

    def finds(self, xor: np.ndarray) -> np.ndarray:
        """Whether this block reports pairs with these xors of fingerprints (block distance <= r)."""
        if self.w < 64:
            xor = (xor >> _U64(self.lo)) & _U64((1 << self.w) - 1)
        return _popcount(xor) <= self.r


def _verify(
    blk: _Block, qpos: np.ndarray, tstart: np.ndarray, tcount: np.ndarray, tau: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs (qpos[k], tstart[k] + t), t < tcount[k], of sorted positions with full distance <= tau."""
    fs = blk.sorted_fps
    single = tcount == 1
    if single.any():  # the common case needs no expansion
        q, t = qpos[single], tstart[single]
        hit = np.flatnonzero(_popcount(fs[q] ^ fs[t]) <= tau)
        if hit.size:
            yield q[hit], t[hit]
        if single.all():
            return
        many = ~single
        qpos, tstart, tcount = qpos[many], tstart[many], tcount[many]
    for a, b in _chunks(tcount, _CAND_CHUNK):
        cnt = tcount[a:b]
        offs = np.cumsum(cnt) - cnt
        tpos = np.arange(int(offs[-1] + cnt[-1]), dtype=np.intp)
        tpos += np.repeat(tstart[a:b] - offs, cnt)
        x = fs[tpos]
        x ^= np.repeat(fs[qpos[a:b]], cnt)
        hit = np.flatnonzero(_popcount(x) <= tau)
        if hit.size:
            k = np.searchsorted(offs, hit, side="right") - 1
            yield qpos[a:b][k], tpos[hit]


def _block_candidates(blk: _Block, tau: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sorted-position pairs within distance tau whose keys in this block are within its radius."""
    ks = blk.sorted_keys
    n = ks.size
    # same key: every later position of the run
    new = np.ones(n, dtype=bool)
    new[1:] = ks[1:] != ks[:-1]
    run_start = np.flatnonzero(new)
    run_len = np.diff(np.append(run_start, n))
    run_end = np.repeat(run_start + run_len, run_len)
    pos = np.arange(n, dtype=np.intp)
    after = run_end - pos - 1
    q = np.flatnonzero(after)
    yield from _verify(blk, q, q + 1, after[q], tau)
    if blk.r == 0:
        return
    # neighbouring keys: each unordered pair of buckets {k, k ^ mask} once, probed from the key whose bit
    # top(mask) is 0
    keys = ks[run_start].astype(np.intp)
    find = _key_finder(keys, blk.w)
    pending: list[tuple[np.ndarray, ...]] = []
    held = 0
    for h, masks in enumerate(_masks_by_top_bit(blk.w, blk.r)):
        low = (keys >> h) & 1 == 0
        qk_all, q_start_all, q_len_all = keys[low], run_start[low], run_len[low]
        # few keys: all masks in one 2-D pass; else one mask at a time over slices of keys
        two_d = qk_all.size * masks.size <= _CAND_CHUNK
        step = max(qk_all.size, 1) if two_d else _CAND_CHUNK
        for lo in range(0, qk_all.size, step):
            qk = qk_all[lo : lo + step]
            q_start, q_len = q_start_all[lo : lo + step], q_len_all[lo : lo + step]
            probes = [qk[:, None] ^ masks[None, :]] if two_d else (qk ^ m for m in masks.tolist())
            for probe in probes:
                flat, bucket = find(probe.ravel())
                if flat.size:
                    row = flat // masks.size if two_d else flat
                    pending.append((q_start[row], q_len[row], run_start[bucket], run_len[bucket]))
                    held += flat.size
                    if held >= _CAND_CHUNK:
                        yield from _bucket_pairs(blk, pending, tau)
                        pending, held = [], 0
    yield from _bucket_pairs(blk, pending, tau)


def _key_finder(keys: np.ndarray, w: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Lookup of probe keys among sorted distinct ``keys``: (positions found, their bucket numbers).

    A direct-address table when the key space is small next to the number of keys, else binary search.
    """
    if 1 << w <= _DENSE * keys.size:
        occupied = np.zeros(1 << w, dtype=bool)
        occupied[keys] = True
        bucket_of = np.zeros(1 << w, dtype=np.int32)
        bucket_of[keys] = np.arange(keys.size, dtype=np.int32)

        def direct(probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            flat = np.flatnonzero(occupied[probe])
            return flat, bucket_of[probe[flat]]

        return direct
    padded = np.append(keys, -1)  # no probe is -1: a miss past the end compares unequal

    def search(probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(keys, probe)
        flat = np.flatnonzero(padded[pos] == probe)
        return flat, pos[flat]

    return search


def _bucket_pairs(blk: _Block, pending: list[tuple[np.ndarray, ...]], tau: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Verified pairs between pairs of buckets, given as (start a, length a, start b, length b) arrays."""
    if not pending:
        return
    sa, ca, sb, cb = (np.concatenate(col) for col in zip(*pending, strict=True))
    # query from the smaller bucket: fewer rows to expand
    swap = ca > cb
    qs, ts = np.where(swap, sb, sa), np.where(swap, sa, sb)
    cq, ct = np.minimum(ca, cb), np.maximum(ca, cb)
    one = cq == 1
    yield from _verify(blk, qs[one], ts[one], ct[one], tau)
    if one.all():
        return
    many = ~one
    qs, ts, cq, ct = qs[many], ts[many], cq[many], ct[many]
    offs = np.cumsum(cq) - cq
    qpos = np.arange(int(offs[-1] + cq[-1]), dtype=np.intp) + np.repeat(qs - offs, cq)
    yield from _verify(blk, qpos, np.repeat(ts, cq), np.repeat(ct, cq), tau)


def _index_pairs(fps: np.ndarray, tau: int, plan: list[tuple[int, int, int]]) -> np.ndarray:
    """Near pairs (i < j, unsorted) by multi-index hashing; each pair reported by its first block only."""
    blocks: list[_Block] = []
    found: list[np.ndarray] = []
    for lo, w, r in plan:
        blk = _Block(fps, lo, w, r)
        for qs, ts in _block_candidates(blk, tau):
            i, j = blk.order[qs], blk.order[ts]
            xor = fps[i] ^ fps[j]
            fresh = np.ones(i.size, dtype=bool)
            for prev in blocks:
                fresh &= ~prev.finds(xor)
            if fresh.any():
                i, j = i[fresh], j[fresh]
                found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
        blocks.append(blk)
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def _brute_pairs(fps: np.ndarray, tau: int) -> np.ndarray:
    """Near pairs (i < j) by comparing every pair, row by row."""
    out = []
    for i in range(fps.size - 1):
        js = np.flatnonzero(_popcount(fps[i + 1 :] ^ fps[i]) <= tau)
        if js.size:
            out.append(np.stack([np.full(js.size, i, dtype=np.intp), js + (i + 1)], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def _sorted_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """Pairs as int64 (m, 2), sorted by (i, j)."""
    pairs = pairs.astype(np.int64, copy=False)
    return pairs[np.argsort(pairs[:, 0] * n + pairs[:, 1], kind="stable")]


def near_pairs(fps: Any, tau: int) -> np.ndarray:
    """All pairs i < j with ``hamming(fps[i], fps[j]) <= tau``, shape (m, 2) int64, sorted by (i, j)."""
    fps = _as_u64(fps).ravel()
    return _sorted_pairs(_near_pairs(fps, tau), fps.size)


def _near_pairs(fps: np.ndarray, tau: int) -> np.ndarray:
    n = fps.size
    if tau < 0 or n < 2:
        return np.empty((0, 2), dtype=np.int64)
    if tau >= 64:
        i, j = np.triu_indices(n, 1)
        return np.stack([i, j], axis=1)
    plan = _plan(n, tau)
    return _brute_pairs(fps, tau) if plan is None else _index_pairs(fps, tau, plan)


def dedup(fps: Any, tau: int = 10) -> np.ndarray:
    """Greedy near-duplicate marks in input order: -1 for a kept item, else the index of a kept item.

    Item i is dropped iff some earlier kept item j has ``hamming(fps[i], fps[j]) <= tau``; it then points at
    the smallest such j. Equals :func:`dedup_bruteforce` exactly. Identical fingerprints are collapsed first
    (a later copy points where its first copy points, or at the first copy when that is kept), so memory
    grows with the number of near pairs among distinct fingerprints only.
    """
    fps = _as_u64(fps).ravel()
    if fps.size == 0 or tau < 0:
        return np.full(fps.size, -1, dtype=np.int64)
    uniq, first, inverse = np.unique(fps, return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.intp)  # unique value -> its rank by first occurrence
    by_first = np.argsort(first)
    rank[by_first] = np.arange(uniq.size)
    reps = first[by_first]  # representatives (first copies) in input order
    rep_dup = _greedy(fps[reps], tau)
    points_at = reps[np.maximum(rep_dup, 0)]
    dup = np.where(rep_dup < 0, reps, points_at)[rank[inverse.ravel()]]  # copies: the first copy or its mark
    dup[reps] = np.where(rep_dup < 0, -1, points_at)
    return dup.astype(np.int64, copy=False)


def _greedy(fps: np.ndarray, tau: int) -> np.ndarray:
    """Greedy marks for distinct fingerprints from their near pairs."""
    n = fps.size
    dup = np.full(n, -1, dtype=np.int64)
    plan = _plan(n, tau) if tau < 64 else None
    if plan is None:
        return dedup_bruteforce(fps, tau)
    pairs = _index_pairs(fps, tau, plan)
    if pairs.size == 0:
        return dup
    order = np.argsort(pairs[:, 1] * n + pairs[:, 0])
    later = pairs[order, 1]
    earlier = pairs[order, 0].tolist()
    js, starts = np.unique(later, return_index=True)
    ends = np.append(starts[1:], later.size)
    kept = bytearray(b"\x01") * n
    out = dup.tolist()
    for j, a, b in zip(js.tolist(), starts.tolist(), ends.tolist(), strict=True):
        for t in range(a, b):
            i = earlier[t]
            if kept[i]:
                kept[j] = 0
                out[j] = i
                break
    return np.array(out, dtype=np.int64)
