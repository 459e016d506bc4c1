"""Trained heads shipped inside the package: small safetensors files beside this module, with MODEL_CARD.md.

``scripts/train_embedded.py`` writes them (:func:`save_head`); the embedded judge and classifier read them
(:func:`load_head`). Nothing is trained at first use, so every install scores the same way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HEADS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Head:
    """A trained head: named float arrays and string metadata (encoder, backend, threshold, training data)."""

    name: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, str]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def check_encoder(head: Head, encoder: Any) -> None:
    """Raise if ``head`` was trained on another encoder's embeddings; warn once (one line) if on another backend
    of the same encoder (for example onnx-int8 heads on torch-fp32 embeddings: cosine ~0.99, close, not equal)."""
    if head.meta["encoder"] != encoder.name:
        raise ValueError(f"the {head.name} head was trained on {head.meta['encoder']} embeddings, not {encoder.name}")
    trained_on = head.meta.get("backend", encoder.backend)
    if trained_on != encoder.backend and (head.name, encoder.backend) not in _warned:
        _warned.add((head.name, encoder.backend))
        print(f"warning: the {head.name} head was trained on {trained_on} embeddings and runs on {encoder.backend}: "
              "scores are close to, not equal to, the model card's", file=sys.stderr)


_warned: set[tuple[str, str]] = set()


def head_path(name: str, folder: Path = HEADS_DIR) -> Path:
    return folder / f"{name}.safetensors"


@functools.cache
def load_head(name: str) -> Head:
    """The shipped head ``name`` (for example ``judge-minilm``), read once per process."""
    from safetensors import safe_open

    path = head_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no shipped head {name!r}; rebuild with scripts/train_embedded.py")
    with safe_open(str(path), "np") as f:
        names = f.keys()  # a safetensors handle, not a dict
        return Head(name, {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {}))


def digest(arrays: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    """16 hex digits identifying a head's arrays (names, dtypes, shapes, bytes) and metadata."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.array(arrays[k], order="C")
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    for k in sorted(meta):
        if k != "digest":
            h.update(f"{k}={meta[k]}".encode())
    return h.hexdigest()[:16]


def save_head(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """Write a head atomically, its ``digest`` added to the metadata; the same arrays and metadata give the same
    bytes (keys sorted)."""
    from safetensors.numpy import save_file

    meta = {**meta, "digest": digest(arrays, meta)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: np.array(arrays[k], order="C") for k in sorted(arrays)}, str(tmp),  # keeps 0-d arrays 0-d
              metadata={k: str(meta[k]) for k in sorted(meta)})
    tmp.chmod(0o644)  # a package file, readable by all like the rest
    os.replace(tmp, path)
