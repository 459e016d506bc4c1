"""``misalign build`` (embedded classifier + dedup, no generators) of a 20,000-prompt pool: ``--engine ray`` vs local.

Pool: the paper's dev prompts (``../shared/data/paper_labelled_prompts_dev.csv``) plus perturbed copies (a word
dropped, or a suffix added) up to ``--prompts``, so dedup has near-duplicates to find. Local: :func:`run_build` in
this process; Ray: a local cluster on this machine's CPUs (start not timed), ``--workers`` actors. Both into fresh
build directories; every output file but the manifest (which names its own directory) compared byte for byte.

    python benchmarks/bench_ray_build.py [--prompts 20000] [--workers 2] [--shards 64]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path

from misalign.build.pipeline import BuildConfig, run_build
from misalign.engines.raydata import RaySettings

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_labelled_prompts_dev.csv"


def pool(path: Path, n: int) -> int:
    """Write ``n`` prompts: the dev prompts, then perturbed copies of them (seeded)."""
    with open(DEV, newline="", encoding="utf-8") as fh:
        base = [r["prompt"] for r in csv.DictReader(fh) if r["prompt"].strip()]
    rng = random.Random(0)
    out = list(base)
    while len(out) < n:
        words = rng.choice(base).split()
        if len(words) > 4 and rng.random() < 0.5:
            del words[rng.randrange(len(words))]
        else:
            words.append(rng.choice(["please", "thanks", "(briefly)", "in detail", "for a report"]))
        out.append(" ".join(words))
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(out[:n])))
    return len(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=64)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_dev = pool(root / "pool.jsonl", args.prompts)
        run_build(BuildConfig(input=root / "pool.jsonl", out=root / "warm", limit=2), say=lambda _: None)  # export
        times = {}
        t0 = time.perf_counter()
        run_build(BuildConfig(input=root / "pool.jsonl", out=root / "local"), say=lambda _: None)
        times["local"] = time.perf_counter() - t0
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        t0 = time.perf_counter()
        run_build(BuildConfig(input=root / "pool.jsonl", out=root / "ray"), say=lambda _: None,
                  ray=RaySettings(workers=args.workers, shards=args.shards))
        times["ray"] = time.perf_counter() - t0
        ray.shutdown()
        names = [p.name for p in (root / "local").iterdir() if p.is_file() and p.name not in ("build_manifest.json",
                                                                                               "cache.sqlite")]
        same = all((root / "local" / n).read_bytes() == (root / "ray" / n).read_bytes() for n in names)
        kept = json.loads((root / "local" / "build_manifest.json").read_text())["prompts"]["kept"]
    print(f"pool: {args.prompts} prompts ({n_dev} dev prompts + perturbed copies), embedded classifier + dedup, "
          f"{os.cpu_count()} CPUs; {kept} kept after dedup")
    print(f"{'engine':<30} {'wall s':>8} {'prompts/s':>10}")
    for name, t in times.items():
        label = name if name == "local" else f"ray ({args.workers} workers, {args.shards} shards)"
        print(f"{label:<30} {t:8.1f} {args.prompts / t:10.0f}")
    print(f"outputs byte-identical ({len(names)} files): {same}")


if __name__ == "__main__":
    main()
