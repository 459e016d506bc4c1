"""The embedded offline domain classifier: per-domain probabilities from MiniLM (or WordLlama) embeddings.

See :class:`DomainClassifier` for the method. The heads ship inside the package
(``misalign/models/heads/classifier-<encoder>.safetensors``, see MODEL_CARD.md there) and are rebuilt by
``scripts/train_embedded.py``; nothing is trained at first use. A head may also carry a semantic-type head
(arrays ``type/W``, 3 x dim, and ``type/b``, 3; metadata ``type/ids``, the types in row order): a softmax over
object, attribute and relation (:meth:`DomainClassifier.type_proba`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from misalign.models.embedded import Encoder
from misalign.models.heads import Head, check_encoder, load_head
from misalign.records import SEMANTIC_TYPES
from misalign.taxonomy import DIMENSIONS, Domain, Taxonomy


def classifier_head_name(encoder: str) -> str:
    return f"classifier-{encoder}"


def domain_text(d: Domain) -> str:
    """What a domain's definition embedding is computed from."""
    return f"{d.name}: {d.definition}"


def definition_features(emb: np.ndarray, def_emb: np.ndarray) -> np.ndarray:
    """(n_texts, n_domains, 2): cos(text, definition) and that minus the best other domain's (0 if alone)."""
    s = emb @ def_emb.T
    if s.shape[1] < 2:
        return np.stack([s, np.zeros_like(s)], axis=-1)
    top2 = np.sort(s, axis=1)[:, -2:]
    best_other = np.where(s >= top2[:, [1]], top2[:, [0]], top2[:, [1]])
    return np.stack([s, s - best_other], axis=-1)


class DomainClassifier:
    """Per-domain probabilities: one logistic regression per shipped domain on the text's embedding.

    Each dimension's heads were fitted on labelled prompts (safety: PKU-SafeRLHF's BeaverTails categories;
    value and cultural: prompts the team wrote and labelled; all three: the bundled train split), and their
    intercepts moved by one per-dimension offset so that p = 0.5 maximises micro-F1 on held-out prompts: δ = 0.5
    is the operating point. A domain of the taxonomy with no shipped head (a user's own domain) is scored from
    its definition: a per-dimension logistic regression on :func:`definition_features`, fitted on the same data.
    """

    def __init__(self, encoder: Encoder, taxonomy: Taxonomy, head: Head | None = None) -> None:
        self.encoder, self.taxonomy = encoder, taxonomy
        self.head = head or load_head(classifier_head_name(encoder.name))
        check_encoder(self.head, encoder)
        self._def_emb: dict[str, np.ndarray] = {}

    def shipped(self, dim: str) -> list[str]:
        """Ids of the domains with a trained head, in the head's row order."""
        return self.head.meta[f"ids/{dim}"].split(",")

    def definition_embeddings(self, dim: str) -> np.ndarray:
        if dim not in self._def_emb:
            self._def_emb[dim] = self.encoder.embed([domain_text(d) for d in self.taxonomy.dimension(dim)])
        return self._def_emb[dim]

    def logits(self, dim: str, emb: np.ndarray) -> np.ndarray:
        """(n_texts, n_domains) logits, domains in taxonomy order."""
        rows = {d: i for i, d in enumerate(self.shipped(dim))}
        domains = self.taxonomy.dimension(dim)
        z = np.empty((len(emb), len(domains)))
        known = [j for j, d in enumerate(domains) if d.id in rows]
        if known:
            picked = [rows[domains[j].id] for j in known]
            z[:, known] = emb.astype(np.float64) @ self.head[f"W/{dim}"][picked].T + self.head[f"b/{dim}"][picked]
        unknown = sorted(set(range(len(domains))) - set(known))
        if unknown:
            feats = definition_features(emb, self.definition_embeddings(dim))[:, unknown].astype(np.float64)
            z[:, unknown] = feats @ self.head[f"def_w/{dim}"] + float(self.head[f"def_b/{dim}"])
        return z

    @property
    def has_type_head(self) -> bool:
        """Whether the head carries a semantic-type head (``type/W`` and ``type/b``)."""
        return "type/W" in self.head.arrays and "type/b" in self.head.arrays

    def type_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n_texts, 3) softmax probabilities of the semantic types, columns in :data:`SEMANTIC_TYPES` order."""
        ids = self.head.meta.get("type/ids", "").split(",")
        if sorted(ids) != sorted(SEMANTIC_TYPES):
            raise ValueError(f"the {self.head.name} head's type/ids {ids!r} are not {', '.join(SEMANTIC_TYPES)}")
        z = self.encoder.embed(texts).astype(np.float64) @ self.head["type/W"].T + self.head["type/b"]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return p[:, [ids.index(t) for t in SEMANTIC_TYPES]]

    def predict_proba(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per dimension, an (n_texts, n_domains) array of probabilities, domains in taxonomy order."""
        emb = self.encoder.embed(texts)
        return {dim: 1.0 / (1.0 + np.exp(-self.logits(dim, emb))) for dim in DIMENSIONS}
