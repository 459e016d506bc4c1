"""``misalign eval`` of the bundled data (all splits, embedded judge, 3 runs): ``--engine ray`` against ``--engine
local``, wall time and whether ``results.jsonl`` and ``metrics.json`` are byte-identical.

Local: :func:`~misalign.bench.runner.evaluate` in this process (fresh judge, fresh run directory). Ray: a local
cluster on this machine's CPUs (started outside the timing; its start is reported), ``--ray-workers`` actors,
``--ray-shards`` shards, fresh run directory; then the same command again, every shard finished (the resume cost).
The encoder's ONNX export is done once before any timing.

    python benchmarks/bench_ray.py [--workers 2] [--shards 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from misalign.bench.runner import EvalConfig, evaluate
from misalign.engines.raydata import RaySettings, ray_judge_all
from misalign.io import load_dataset


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import ray

    ds = load_dataset("bundled").select("all")
    cfg = EvalConfig(runs=args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = load_dataset("bundled").select("test")
        small.records = small.records[:2]
        evaluate(small, EvalConfig(runs=1, n_boot=10), root / "warm")  # the ONNX export, once
        t_local = _timed(lambda: evaluate(ds, cfg, root / "local"))
        t_start = _timed(lambda: ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR"))
        engine = ray_judge_all(RaySettings(workers=args.workers, shards=args.shards))
        t_ray = _timed(lambda: evaluate(ds, cfg, root / "ray", engine=engine))
        t_again = _timed(lambda: evaluate(ds, cfg, root / "ray", engine=engine))
        same = all((root / "local" / f).read_bytes() == (root / "ray" / f).read_bytes()
                   for f in ("results.jsonl", "metrics.json"))
        ray.shutdown()
    calls = 2 * len(ds) * args.runs
    print(f"bundled data, all splits: {len(ds)} items, {calls} judged responses ({args.runs} runs), embedded judge, "
          f"{os.cpu_count()} CPUs")
    print(f"{'engine':<34} {'wall s':>8} {'responses/s':>12}")
    print(f"{'local':<34} {t_local:8.1f} {calls / t_local:12.0f}")
    print(f"{f'ray ({args.workers} workers, {args.shards} shards)':<34} {t_ray:8.1f} {calls / t_ray:12.0f}")
    print(f"{'ray re-run (all shards finished)':<34} {t_again:8.1f}")
    print(f"ray local cluster start: {t_start:.1f} s (not in the ray row)")
    print(f"results.jsonl and metrics.json byte-identical: {same}")


if __name__ == "__main__":
    main()
