"""Benchmark a validated load of 100,000 paired items against a plain pyarrow read of the same file.

The items: the bundled dataset's, repeated and perturbed so that every one is distinct (a new id, the prompt
with a variant number, the split rotated), written once as JSONL (``write_rows`` of our schema) and once as
Parquet (``write_dataset``).

Timed, per format: the plain read (``pyarrow.json.read_json`` / ``pyarrow.parquet.read_table`` of the path, default
options, so ``use_threads=True`` as the load's own reads; the baseline); ``load_dataset`` on the per-row path (the
loader before the bulk path, ``_BULK`` off); ``load_dataset`` now: the validated load (the file read and hashed,
every check run, records not built yet), and the same load with every record then built (``list(ds.records)``).
The two loads are checked to give equal records and equal ``summarize`` output. Then ``misalign data inspect FILE
--json`` end to end (a fresh process, imports included) on each path. Best of ``--repeats`` runs (the per-row path
once): on a shared machine the fastest run is the one least slowed by other work. The Parquet file is written by
``write_dataset``: plain string columns, the schema Ray Data reads.

Run: ``.venv/bin/python benchmarks/bench_load.py [--n 100000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.json as pj
import pyarrow.parquet as pq

import misalign.io.dataset as dataset
from misalign.io import load_dataset, record_to_row, write_dataset, write_rows
from misalign.io.summary import summarize

SPLITS = ("train", "validation", "test")


def items(n: int) -> list[dict[str, Any]]:
    """``n`` distinct rows of our schema made from the bundled items."""
    base = [record_to_row(r) for r in load_dataset("bundled").records]
    out = []
    for i in range(n):
        row = dict(base[i % len(base)])
        row["id"] = f"{row['id']}~{i}"
        row["prompt"] = f"{row['prompt']} (variant {i})"
        row["split"] = SPLITS[(i // len(base)) % 3]
        out.append(row)
    return out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        result = None  # the previous result is freed before the next call, not during it
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def built(path: Path) -> dataset.Dataset:
    """A load with every record built."""
    ds = load_dataset(path)
    list(ds.records)
    return ds


def per_row(path: Path) -> dataset.Dataset:
    dataset._BULK = False
    try:
        return load_dataset(path)
    finally:
        dataset._BULK = True


def inspect(path: Path, bulk: bool) -> float:
    """Wall time of ``misalign data inspect PATH --json`` in a fresh process."""
    code = ("import sys, misalign.io.dataset as d; d._BULK = " + str(bulk) + "; sys.argv = ['misalign', 'data', "
            f"'inspect', {str(path)!r}, '--json']; from misalign.cli import main; main()")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = items(args.n)
        jsonl, parquet = Path(tmp, "items.jsonl"), Path(tmp, "items.parquet")
        write_rows(jsonl, rows)
        write_dataset(parquet, load_dataset(jsonl).records)
        del rows
        readers = {"jsonl": lambda: pj.read_json(jsonl), "parquet": lambda: pq.read_table(parquet)}
        print(f"{args.n:,} items; JSONL {jsonl.stat().st_size / 1e6:.0f} MB, Parquet "
              f"{parquet.stat().st_size / 1e6:.0f} MB; best of {args.repeats}\n")
        print("| format | pyarrow read | per-row load (before) | validated load (now) | now / pyarrow "
              "| now + all records built | inspect before | inspect now |")
        print("|---|---|---|---|---|---|---|---|")
        for fmt, path in (("jsonl", jsonl), ("parquet", parquet)):
            plain, _ = timed(readers[fmt], args.repeats)
            now, new = timed(lambda p=path: load_dataset(p), args.repeats)
            full, _ = timed(lambda p=path: built(p), args.repeats)
            before, old = timed(lambda p=path: per_row(p), 1)
            assert summarize(new) == summarize(old), f"{fmt}: the two paths summarise differently"
            assert new.records == old.records and new.sha256 == old.sha256, f"{fmt}: the two paths differ"
            del old, new
            inspect_before = inspect(path, bulk=False)
            inspect_now = min(inspect(path, bulk=True) for _ in range(args.repeats))
            print(f"| {fmt} | {plain:.2f} s | {before:.2f} s | {now:.2f} s | {now / plain:.2f}x | {full:.2f} s "
                  f"| {inspect_before:.1f} s | {inspect_now:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
