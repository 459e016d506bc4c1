"""Time write_report on 10 synthetic run directories of 10,000 paired items each (goal: under 10 s).

Run: ``.venv/bin/python benchmarks/bench_report.py [--models 10] [--items 10000] [--runs 3] [--fresh]``.
The run directories are generated once into benchmarks/out/ (ignored by git) and reused. The table gives the
baseline (results.jsonl parsed with the standard library's json) beside what the report does (pyarrow).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from misalign.report import write_report
from misalign.report.data import _read_python, read_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_runs import synthetic_items, write_synthetic_run

GOAL_S = 10.0


def make_dirs(root: Path, models: int, items: int, runs: int) -> list[Path]:
    """The run directories, generated unless a previous call left them complete."""
    dirs = [root / f"model{k:02d}" for k in range(models)]
    if all((d / "metrics.json").is_file() for d in dirs):
        return dirs
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    data = synthetic_items(items, dataset_seed=0)
    for k, d in enumerate(dirs):
        write_synthetic_run(d, model=f"synthetic-judge-{k:02d}", items=data, n_runs=runs, model_seed=k,
                            coverage={"safety": 0.9 - 0.03 * k, "value": 0.7 + 0.02 * k, "cultural": 0.8},
                            ffr=0.1 + 0.02 * k, unparseable=0.02, failed=0.01, n_boot=200,
                            created=f"2026-02-{k + 1:02d}T10:00:00Z")
    print(f"generated {models} run dirs x {items} items x {runs} runs in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    return dirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="regenerate the run directories")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent / "out" / f"report-{args.models}x{args.items}x{args.runs}"
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    dirs = make_dirs(root, args.models, args.items, args.runs)
    size = sum((d / "results.jsonl").stat().st_size for d in dirs) / 1e6

    out = root / "report.html"
    t = time.perf_counter()  # first, as in a fresh `misalign report` process (imports of matplotlib, scipy included)
    write_report(dirs, out)
    total = time.perf_counter() - t
    t = time.perf_counter()
    for d in dirs:
        read_results(d / "results.jsonl")
    fast = time.perf_counter() - t
    t = time.perf_counter()
    for d in dirs:
        _read_python(d / "results.jsonl", (d / "results.jsonl").read_bytes())
    baseline = time.perf_counter() - t

    rows = [("read results.jsonl, stdlib json (baseline)", baseline, ""),
            ("read results.jsonl, pyarrow (used)", fast, f"{baseline / fast:.1f}x faster"),
            ("write_report, end to end", total, "OK" if total < GOAL_S else f"over the {GOAL_S:.0f} s goal")]
    print(f"{args.models} run dirs x {args.items} items x {args.runs} runs ({size:.0f} MB of results.jsonl), "
          f"report {out.stat().st_size / 1e6:.1f} MB")
    print(f"{'step':<44} {'seconds':>8}  note")
    for name, sec, note in rows:
        print(f"{name:<44} {sec:8.2f}  {note}")
    return 0 if total < GOAL_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
