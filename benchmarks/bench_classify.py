"""Speed and agreement of the embedded classifier's two encoders against the paper's own labels.

Reads ../shared/data/paper_labelled_prompts_dev.csv (2,000 prompts labelled by the authors' Mistral-7B
classifier: noisy, a reference rather than ground truth; never trained on). For each encoder (MiniLM and
WordLlama) it prints prompts/s (encoding plus scoring, models already loaded) and micro-F1 per dimension at
delta = 0.5.

    python benchmarks/bench_classify.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from misalign.build.classify import EmbeddedClassifier, micro_f1
from misalign.io import load_dataset, load_prompts
from misalign.records import Prompt
from misalign.taxonomy import DIMENSIONS, Taxonomy

PAPER_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper_labelled_prompts_dev.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    if not PAPER_CSV.exists():
        sys.exit(f"{PAPER_CSV} not found: this benchmark needs the team's shared data")
    tax = Taxonomy.default()
    gold, _ = load_prompts(PAPER_CSV, taxonomy=tax)
    gold = gold[: args.n]
    bare = [g.model_copy(update={"domains": None}) for g in gold]
    print(f"{len(gold)} prompts; gold domains per dimension:",
          {d: sum(bool(g.domains.get(d)) for g in gold) for d in DIMENSIONS})
    print(f"{'encoder':<10} {'prompts/s':>10} " + " ".join(f"{d + ' F1':>12}" for d in DIMENSIONS)
          + " " + " ".join(f"{d + ' P/R':>14}" for d in DIMENSIONS))
    for encoder in ("minilm", "wordllama"):
        classifier = EmbeddedClassifier(tax, encoder=encoder)

        def classify(prompts: list[Prompt], classifier: EmbeddedClassifier = classifier) -> list[Prompt]:
            return asyncio.run(classifier.classify(prompts)).prompts

        classify([bare[0].model_copy(update={"prompt": "warm-up prompt"})])  # load weights, fit heads untimed
        t0 = time.perf_counter()
        pred = classify(bare)
        rate = len(bare) / (time.perf_counter() - t0)
        scores = {d: micro_f1([g.domains for g in gold], [p.domains for p in pred], d) for d in DIMENSIONS}
        print(f"{encoder:<10} {rate:>10.0f} " + " ".join(f"{scores[d]['f1']:>12.3f}" for d in DIMENSIONS) + " "
              + " ".join(f"{scores[d]['precision']:>6.2f}/{scores[d]['recall']:<7.2f}" for d in DIMENSIONS))
        held = [r for r in load_dataset("bundled").records if r.split != "train"]  # never seen by the heads
        pred = classify([Prompt(id=r.id, prompt=r.prompt) for r in held])
        f1 = {d: micro_f1([r.domains for r in held], [p.domains for p in pred], d)["f1"] for d in DIMENSIONS}
        print(f"{'':<10} {'':>10} " + " ".join(f"{f1[d]:>12.3f}" for d in DIMENSIONS)
              + f"   <- bundled validation+test prompts ({len(held)}, our labels)")


if __name__ == "__main__":
    main()
