"""The embedded offline domain classifier: per-domain probabilities from MiniLM (or WordLlama) embeddings.

See :class:`DomainClassifier` for the method. Heads are trained on the bundled train split and cached on disk
(:func:`misalign.models.embedded.cached_arrays`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from misalign.models.embedded import Encoder, cached_arrays
from misalign.taxonomy import DIMENSIONS, Domain, Taxonomy

CLASSIFIER_VERSION = "classify-v1"


def _domain_text(d: Domain) -> str:
    return f"{d.name}: {d.definition}"


class DomainClassifier:
    """Per-domain probabilities from similarity to domain definitions and to labelled exemplar prompts.

    For a text x and a domain d of one dimension the features are: cos(x, definition of d), the largest cos(x,
    exemplar prompt of d), and each of those minus its best value over the dimension's other domains. One
    logistic regression per dimension, shared by all its domains (so a user's new domain needs only a
    definition), is fitted on the bundled train split with each prompt left out of its own exemplars. Its
    intercept is then shifted so that p = 0.5 sits at the threshold that maximises micro-F1 on that data: 0.5
    is the operating point, not an arbitrary cut on a rare-class posterior.
    """

    def __init__(self, encoder: Encoder, taxonomy: Taxonomy) -> None:
        from misalign.io import load_dataset

        self.encoder = encoder
        self.taxonomy = taxonomy
        train = load_dataset("bundled", taxonomy=taxonomy).select("train").records
        self.ex_texts = list(dict.fromkeys(r.prompt for r in train))
        pos = {t: i for i, t in enumerate(self.ex_texts)}
        self.ex_emb = encoder.embed(self.ex_texts)
        self.ex_labels: dict[str, np.ndarray] = {}  # dim -> (n_exemplars, n_domains) 0/1
        for dim in DIMENSIONS:
            names = taxonomy.names(dim)
            lab = np.zeros((len(self.ex_texts), len(names)), dtype=bool)
            for r in train:
                for n in r.domains.get(dim):
                    lab[pos[r.prompt], names.index(n)] = True
            self.ex_labels[dim] = lab
        self.def_emb = {dim: encoder.embed([_domain_text(d) for d in taxonomy.dimension(dim)])
                        for dim in DIMENSIONS}
        self.heads = self._heads()

    def features(self, dim: str, emb: np.ndarray, leave_out: np.ndarray | None = None) -> np.ndarray:
        """Feature tensor (n_texts, n_domains, 4)."""
        s_def = emb @ self.def_emb[dim].T
        sims = emb @ self.ex_emb.T  # (n, n_exemplars)
        if leave_out is not None:
            sims[np.arange(len(emb)), leave_out] = -1.0
        lab = self.ex_labels[dim]
        s_ex = np.full(s_def.shape, -1.0, dtype=np.float32)
        for j in range(lab.shape[1]):
            cols = np.flatnonzero(lab[:, j])
            if cols.size:
                s_ex[:, j] = sims[:, cols].max(axis=1)
        return np.stack([s_def, s_ex, _margin(s_def), _margin(s_ex)], axis=-1)

    def _heads(self) -> dict[str, tuple[np.ndarray, float]]:
        arrays = cached_arrays(f"classifier-{self.fingerprint}", self._train)
        return {dim: (arrays[f"{dim}_w"], float(arrays[f"{dim}_b"])) for dim in DIMENSIONS}

    @property
    def fingerprint(self) -> str:
        """Identifies the trained heads: bundled data, version, taxonomy and encoder settings."""
        from misalign.io import bundled_files

        h = hashlib.sha256(f"{CLASSIFIER_VERSION}:{self.taxonomy.version}:{self.encoder.name}:"
                           f"{self.encoder.max_seq_length}".encode())
        for f in bundled_files():
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def _train(self) -> dict[str, np.ndarray]:
        """One logistic regression per dimension, its intercept moved to the best-F1 threshold."""
        from sklearn.linear_model import LogisticRegression

        heads = {}
        for dim in DIMENSIONS:
            x = self.features(dim, self.ex_emb, leave_out=np.arange(len(self.ex_texts)))
            y = self.ex_labels[dim].reshape(-1)
            x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
            clf = LogisticRegression(C=1.0, max_iter=1000).fit(x2, y)
            w, b = clf.coef_[0], float(clf.intercept_[0])
            z = x2 @ w + b
            heads[dim] = (w, b - _best_f1_logit(z, y))
        return {**{f"{d}_w": h[0] for d, h in heads.items()}, **{f"{d}_b": np.float64(h[1]) for d, h in heads.items()}}

    def predict_proba(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per dimension, an (n_texts, n_domains) array of probabilities, domains in taxonomy order."""
        emb = self.encoder.embed(texts)
        out = {}
        for dim, (w, b) in self.heads.items():
            z = self.features(dim, emb) @ w + b
            out[dim] = 1.0 / (1.0 + np.exp(-z))
        return out


def _margin(s: np.ndarray) -> np.ndarray:
    """s minus the best other value in its row."""
    if s.shape[1] < 2:
        return np.zeros_like(s)
    top2 = np.sort(s, axis=1)[:, -2:]
    best_other = np.where(s >= top2[:, [1]], top2[:, [0]], top2[:, [1]])
    return s - best_other


def _best_f1_logit(z: np.ndarray, y: np.ndarray) -> float:
    """The logit threshold that maximises F1 of ``z >= t`` against ``y``."""
    order = np.argsort(-z)
    ys = y[order].astype(np.float64)
    tp = np.cumsum(ys)
    k = np.arange(1, len(ys) + 1)
    f1 = 2 * tp / (k + ys.sum())
    i = int(np.argmax(f1))
    return float(z[order][i])
