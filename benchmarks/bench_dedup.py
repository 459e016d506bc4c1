"""Benchmark SimHash fingerprinting and exact near-duplicate removal on a realistic prompt pool.

The pool: the 2,000 real prompts of ``../shared/data/paper_labelled_prompts_dev.csv`` when present (else
synthetic sentences from a word list); then, up to ``--n``, a share ``--dup-frac`` of near-duplicates of
earlier prompts (word swaps, typos, dropped words, appended phrases, sentence shuffles, case and spacing
changes) and, for the rest, distinct prompts recombined from runs of 2-6 words of different prompts, a tenth
of their words replaced by random words of the base prompts' vocabulary.

Timed: our fingerprints; the ``simhash`` package's ``Simhash`` on a 5k subsample, extrapolated linearly (if
installed); our dedup index; the brute-force reference on a subsample, extrapolated quadratically (checked
equal to the index on that subsample).

Run: ``.venv/bin/python benchmarks/bench_dedup.py [--n 400000] [--tau 10]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

from misalign.build.simhash import dedup, dedup_bruteforce, fingerprints

PAPER_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_labelled_prompts_dev.csv"
APPENDED = [
    "Please be concise.", "Thanks in advance!", "Explain your reasoning.", "Answer in one paragraph.",
    "Give examples.", "Be specific.", "Keep it short.", "Use simple words.",
]
WORDS = " ".join([
    "the a of to and in is for on with as by how what why who which when where should could would can do does",
    "people company culture value safety law money family school city music film food art history science data",
    "policy health energy water climate game book design market team child parent friend community tradition",
    "festival museum language religion privacy risk weapon drug crime violence harm help explain describe write",
    "list compare suggest plan create analyse summarise review argue improve protect respect share build learn",
]).split()


def load_base(n_synthetic: int, rng: random.Random) -> list[str]:
    """The paper's dev prompts, or synthetic sentences from a word list when the file is absent."""
    if PAPER_CSV.exists():
        with PAPER_CSV.open(newline="", encoding="utf-8") as fh:
            return [row["prompt"] for row in csv.DictReader(fh) if row["prompt"].strip()]
    out = []
    for _ in range(n_synthetic):
        sents = [" ".join(rng.choices(WORDS, k=rng.randint(6, 16))).capitalize() + rng.choice(".?")
                 for _ in range(rng.randint(1, 3))]
        out.append(" ".join(sents))
    return out


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _fragments(base: list[str], rng: random.Random) -> list[list[str]]:
    """Runs of 2-6 consecutive words of the base prompts, the pieces of recombined prompts."""
    out = []
    for p in base:
        words = p.split()
        while words:
            k = rng.randint(2, 6)
            out.append(words[:k])
            words = words[k:]
    return out


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word + rng.choice("aeiost")
    i = rng.randrange(len(word))
    op = rng.randrange(3)
    if op == 0:
        return word[:i] + word[i + 1 :]
    if op == 1:
        return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i + 1 :]
    return word[:i] + word[i : i + 2][::-1] + word[i + 2 :]


def near_variant(text: str, rng: random.Random) -> str:
    """A near-duplicate: one to three small edits."""
    for _ in range(rng.randint(1, 3)):
        words = text.split()
        op = rng.randrange(6)
        if op == 0 and len(words) > 2:  # swap two adjacent words
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 1 and words:  # typo
            i = rng.randrange(len(words))
            words[i] = _typo(words[i], rng)
        elif op == 2 and len(words) > 4:  # drop a word
            del words[rng.randrange(len(words))]
        elif op == 3:  # appended phrase
            words.append(rng.choice(APPENDED))
        elif op == 4 and len(_sentences(text)) > 1:  # sentence shuffle
            sents = _sentences(text)
            rng.shuffle(sents)
            words = " ".join(sents).split()
        else:  # case and spacing (normalised away)
            words = [w.upper() if rng.random() < 0.2 else w for w in words]
        text = ("  " if op == 5 else " ").join(words)
    return text


def build_pool(n: int, dup_frac: float = 0.2, seed: int = 0) -> list[str]:
    """``n`` prompts: the base prompts, near-duplicates of earlier ones, and distinct recombinations."""
    rng = random.Random(seed)
    base = load_base(2000, rng)
    frags = _fragments(base, rng)
    vocab = sorted({w for p in base for w in p.split()})
    pool = base[:n]
    while len(pool) < n:
        if rng.random() < dup_frac:
            pool.append(near_variant(pool[rng.randrange(len(pool))], rng))
            continue
        target, words = rng.randint(15, 45), []
        while len(words) < target:
            words += frags[rng.randrange(len(frags))]
        words = [rng.choice(vocab) if rng.random() < 0.1 else w for w in words]  # 10% of words replaced
        text = " ".join(words)
        pool.append(text[:1].upper() + text[1:] + rng.choice(["?", ".", ""]))
    return pool


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _simhash_package_seconds(texts: list[str]) -> float | None:
    """Seconds for the ``simhash`` package's ``Simhash(text).value`` over ``texts``, or None if not installed."""
    try:
        from simhash import Simhash
    except ImportError:
        return None
    t0 = time.perf_counter()
    for t in texts:
        Simhash(t).value  # noqa: B018 - the work being timed
    return time.perf_counter() - t0


def _simhash_index_dedup(fps: np.ndarray, tau: int) -> np.ndarray | None:
    """Greedy first-kept dedup through the ``simhash`` package's ``SimhashIndex`` (k = tau) over OUR
    fingerprints, so its output must equal ours; None if the package is not installed."""
    try:
        from simhash import Simhash, SimhashIndex
    except ImportError:
        return None
    import logging

    logging.getLogger("simhash").setLevel(logging.ERROR)  # it warns on every large bucket
    index = SimhashIndex([], f=64, k=tau)
    out = np.full(fps.size, -1, dtype=np.int64)
    for i, fp in enumerate(fps.tolist()):
        obj = Simhash(int(fp))
        near = index.get_near_dups(obj)
        if near:
            out[i] = min(int(j) for j in near)
        else:
            index.add(str(i), obj)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400_000, help="pool size")
    ap.add_argument("--tau", type=int, default=10, help="Hamming distance for near-duplicates")
    ap.add_argument("--dup-frac", type=float, default=0.2, help="share of near-duplicate variants")
    ap.add_argument("--brute-n", type=int, default=20_000, help="subsample for the brute-force reference")
    ap.add_argument("--package-n", type=int, default=5_000, help="subsample for the simhash package")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    pool, t_pool = _timed(build_pool, args.n, args.dup_frac, args.seed)
    n = len(pool)
    words = float(np.mean([len(p.split()) for p in pool]))
    source = PAPER_CSV.name if PAPER_CSV.exists() else "synthetic sentences"
    print(f"pool: {n} prompts from {source}, {words:.1f} words on average (built in {t_pool:.1f} s)")
    rng = np.random.default_rng(args.seed)

    fps, t_fp = _timed(fingerprints, pool)
    # the brief's yardstick: ~40-word prompts, on one thread and on all usable CPUs
    k = min(50_000, n // 2)
    words40 = [" ".join(f"{a} {b}".split()[:40]) for a, b in zip(pool[:k], pool[k : 2 * k], strict=True)]
    _, t40_one = _timed(lambda t: fingerprints(t, workers=1), words40)
    _, t40_all = _timed(fingerprints, words40)
    sub_pkg = [pool[i] for i in rng.choice(n, min(args.package_n, n), replace=False)]
    t_pkg = _simhash_package_seconds(sub_pkg)
    dup, t_dd = _timed(dedup, fps, args.tau)
    dropped = int((dup >= 0).sum())

    sub = np.sort(rng.choice(n, min(args.brute_n, n), replace=False))
    dup_sub, t_idx_sub = _timed(dedup, fps[sub], args.tau)
    ref_sub, t_bf_sub = _timed(dedup_bruteforce, fps[sub], args.tau)
    assert np.array_equal(dup_sub, ref_sub), "index and brute force disagree"
    t_bf = t_bf_sub * (n / sub.size) ** 2

    pkg_sub = np.sort(rng.choice(n, min(args.package_n, n), replace=False))
    ours_pkg, t_ours_pkg = _timed(dedup, fps[pkg_sub], args.tau)
    idx_pkg, t_idx_pkg = _timed(_simhash_index_dedup, fps[pkg_sub], args.tau)

    rows: list[tuple[str, int, float, str]] = [
        ("fingerprint, ours", n, t_fp, "1.00"),
    ]
    if idx_pkg is not None:
        assert np.array_equal(ours_pkg, idx_pkg), "SimhashIndex and our index disagree"
        rows += [("dedup, ours, package subsample", int(pkg_sub.size), t_ours_pkg, "1.00"),
                 ("dedup, simhash.SimhashIndex k=tau (equal result)", int(pkg_sub.size), t_idx_pkg,
                  f"{t_idx_pkg / t_ours_pkg:.0f}")]
    if t_pkg is not None:
        t_pkg_n = t_pkg * n / len(sub_pkg)
        rows.append((f"fingerprint, simhash package ({len(sub_pkg)} timed, x{n / len(sub_pkg):.0f})", n, t_pkg_n,
                     f"{t_pkg_n / t_fp:.2f}"))
    rows += [
        ("dedup, ours (multi-index)", n, t_dd, "1.00"),
        (f"dedup, brute force ({sub.size} timed, x{(n / sub.size) ** 2:.0f})", n, t_bf, f"{t_bf / t_dd:.2f}"),
        ("dedup, ours, subsample", int(sub.size), t_idx_sub, "1.00"),
        ("dedup, brute force, subsample (equal result)", int(sub.size), t_bf_sub, f"{t_bf_sub / t_idx_sub:.2f}"),
        ("fingerprint + dedup, ours", n, t_fp + t_dd, f"goal < 60 s: {'met' if t_fp + t_dd < 60 else 'MISSED'}"),
    ]
    print(f"dedup tau={args.tau}: kept {n - dropped}, dropped {dropped} ({dropped / n:.1%}); "
          f"index blocks (low bit, width, radius): {plan_of(fps, args.tau)}")
    print(f"fingerprints: {n / t_fp:,.0f} prompts/s on the pool; 40-word prompts: {k / t40_one:,.0f}/s on one "
          f"thread, {k / t40_all:,.0f}/s on {os.cpu_count()} CPUs")
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'step':<{width}} | {'items':>7} | {'seconds':>8} | ratio to ours |")
    print(f"|{'-' * (width + 2)}|{'-' * 9}|{'-' * 10}|---------------|")
    for name, items, secs, ratio in rows:
        print(f"| {name:<{width}} | {items:>7} | {secs:>8.2f} | {ratio:>13} |")
    return 0


def plan_of(fps: np.ndarray, tau: int) -> str:
    """The index layout dedup uses for these fingerprints (after collapsing identical ones)."""
    from misalign.build import simhash

    plan = simhash._plan(np.unique(fps).size, tau)
    return "brute force" if plan is None else str(plan)


if __name__ == "__main__":
    sys.exit(main())
