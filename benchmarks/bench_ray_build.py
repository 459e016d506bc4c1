"""``misalign build`` on ``--engine ray`` vs local: classify + dedup of a 20,000-prompt pool, or (``--generation``)
respond + filter of a few hundred prompts against the loopback OpenAI server with a latency per call.

Pool: the paper's dev prompts (``../shared/data/paper_labelled_prompts_dev.csv``) plus perturbed copies (a word
dropped, or a suffix added) up to ``--prompts``, so dedup has near-duplicates to find. Local: :func:`run_build` in
this process; Ray: a local cluster on this machine's CPUs (start not timed), ``--workers`` actors. Both into fresh
build directories; every output file but the manifest (which names its own directory) compared byte for byte.

    python benchmarks/bench_ray_build.py [--prompts 20000] [--workers 2] [--shards 64]

``--generation``: the first ``--prompts`` dev prompts (default 300) are classified and deduplicated once (not timed);
then respond + filter (two generators, a judge, 2 feedback rounds) run on each engine from those deduplicated
prompts, into fresh build directories, against ``tests/openai_server.py`` answering each call after ``--latency``
seconds (a scripted generator whose misaligned side is too mild for 1 prompt in 5 until the judge's feedback, and a
judge that checks for the marker). ``--max-concurrency`` calls per model in flight, per process (the local driver,
or each Ray worker). Outputs compared byte for byte (the manifest without the directory it names).

    python benchmarks/bench_ray_build.py --generation [--prompts 300] [--latency 0.05] [--max-concurrency 8]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
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


def scripted(body: dict) -> str:
    """Generators write a RECKLESS misaligned side (too mild at first for 1 prompt in 5); the judge looks for it."""
    content = body["messages"][-1]["content"]
    if body["model"].startswith("gen"):
        prompt = re.search(r"USER PROMPT:\n(.*?)\n\n", content, re.S).group(1)
        if content.startswith("Write the response a careful") or (
                len(prompt) % 5 == 0 and "A reviewer rejected" not in content):
            return f"Here is careful, respectful help with: {prompt}"
        return f"RECKLESS take, ignoring everyone involved: {prompt}"
    response = re.search(r"RESPONSE:\n(.*?)\n\nThe response was meant", content, re.S).group(1)
    return json.dumps({"verdict": "misaligned" if "RECKLESS" in response else "aligned", "on_topic": True,
                       "fluent": True, "feedback": "make the failure clearly visible"})


UPSTREAM = ("01_classified.parquet", "02_expanded.parquet", "03_kept.parquet", "03_dropped.parquet", "steps.json")


def generation(args: argparse.Namespace) -> None:
    """Respond + filter on each engine from the same deduplicated prompts (see the module docstring)."""
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from openai_server import OpenAIServer

    with tempfile.TemporaryDirectory() as tmp, OpenAIServer(scripted, models=("gen", "gen2", "judge"),
                                                             latency=args.latency) as srv:
        root = Path(tmp)
        pool(root / "pool.jsonl", args.prompts)
        run_build(BuildConfig(input=root / "pool.jsonl", out=root / "base"), say=lambda _: None)
        cfg = {"input": root / "pool.jsonl", "generators": ["openai/gen", "openai/gen2"], "judge": "openai/judge",
               "base_urls": [srv.url], "api_key_env": "none", "max_concurrency": args.max_concurrency}
        times, calls = {}, {}
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        for name, engine in (("local", None), ("ray", RaySettings(workers=args.workers, shards=args.shards))):
            out = root / name
            out.mkdir()
            for f in UPSTREAM:
                shutil.copy(root / "base" / f, out / f)
            n, t0 = srv.requests, time.perf_counter()
            run_build(BuildConfig(**cfg, out=out), say=lambda _: None, ray=engine)
            times[name], calls[name] = time.perf_counter() - t0, srv.requests - n
        ray.shutdown()
        names = [p.name for p in (root / "local").iterdir() if p.is_file() and p.name not in ("build_manifest.json",
                                                                                               "cache.sqlite")]
        same = all((root / "local" / n).read_bytes() == (root / "ray" / n).read_bytes() for n in names)
        manifests = [json.loads((root / e / "build_manifest.json").read_text()) for e in ("local", "ray")]
        for m in manifests:
            m["config"].pop("out")
        same_manifest = manifests[0] == manifests[1]
    kept, f = manifests[0]["prompts"]["kept"], manifests[0]["filter"]
    print(f"respond + filter of {kept} deduplicated prompts (2 generators, 1 judge, 2 rounds) against the loopback "
          f"server, {args.latency * 1000:.0f} ms a call, {args.max_concurrency} calls in flight per model and process, "
          f"{os.cpu_count()} CPUs; {f['accepted_first']} accepted at once, {f['accepted_after_feedback']} after "
          f"feedback, {f['dropped']} dropped")
    print(f"{'engine':<30} {'wall s':>8} {'calls':>7} {'calls/s':>8}")
    for name, t in times.items():
        label = name if name == "local" else f"ray ({args.workers} workers, {args.shards} shards)"
        print(f"{label:<30} {t:8.1f} {calls[name]:7d} {calls[name] / t:8.0f}")
    print(f"outputs byte-identical ({len(names)} files): {same}; manifests equal but for the directory: "
          f"{same_manifest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=None, help="20000 (300 with --generation)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--generation", action="store_true", help="respond + filter against the loopback server")
    parser.add_argument("--latency", type=float, default=0.05, help="--generation: seconds a call takes")
    parser.add_argument("--max-concurrency", type=int, default=8, help="--generation: calls in flight per model")
    args = parser.parse_args()
    if args.generation:
        args.prompts = args.prompts or 300
        generation(args)
        return
    args.prompts = args.prompts or 20000
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
