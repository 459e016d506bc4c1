"""Stage I step 1: give every prompt a probability per domain and assign those with p >= delta.

A :class:`Classifier` turns prompts into classified prompts plus the failures it could not classify. Two
implement it: :class:`ChatClassifier` (any chat model, asked once per prompt through the ``classify_v1``
template for a JSON object of the domains that apply, validated against the taxonomy) and
:class:`EmbeddedClassifier` (offline; :class:`misalign.build.embedded_classifier.DomainClassifier`).
:func:`get_classifier` is the one place a classifier is chosen by model string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from misalign.io.answers import json_objects
from misalign.models import EMBEDDED, CallCache, GenerationParams, ModelPool, complete_many
from misalign.models.base import ChatModel, Completion
from misalign.models.embedded import Encoder
from misalign.records import Domains, Prompt
from misalign.taxonomy import DIMENSIONS, Taxonomy
from misalign.templates import Template, load_template

DELTA = 0.5
"""Domains with a probability of at least this are assigned."""
TEMPLATE = "classify_v1"
OnResult = Callable[[int, Completion], None]
"""Called with a request's index and its completion as each answer is known (cache hits included)."""
Probabilities = dict[str, dict[str, float]]
"""Dimension -> domain name -> probability, every domain of the taxonomy present."""


@dataclass
class Classification:
    """What a classifier made of a list of prompts."""

    prompts: list[Prompt]
    """The prompts in input order, with probabilities and domains (a failed one keeps ``domains=None``)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """One ``{"id", "reason", "raw"}`` per prompt that could not be classified."""


class Classifier(Protocol):
    """What the classify and expand steps need of a classifier. ``name`` is its model string."""

    name: str
    template: Template | None
    """The prompt template used (recorded in the build manifest), or None for one that calls no model."""

    async def classify(self, prompts: Sequence[Prompt], *, cache: CallCache | None = None,
                       on_result: OnResult | None = None) -> Classification:
        """Probabilities and assigned domains for every prompt."""
        ...


def get_classifier(spec: str, taxonomy: Taxonomy, *, pool: ModelPool | None = None, delta: float = DELTA,
                   encoder: str = "minilm") -> Classifier:
    """The classifier named by a model string: ``embedded`` (offline, with ``encoder``) or a chat model of ``pool``."""
    if spec == EMBEDDED:
        return EmbeddedClassifier(taxonomy, delta, encoder=encoder)
    if pool is None:
        raise ValueError(f"the chat classifier {spec!r} needs a ModelPool")
    return ChatClassifier(pool.get(spec), taxonomy, delta)


def assign(probabilities: Probabilities, delta: float = DELTA) -> Domains:
    """Domains whose probability is at least ``delta`` (multi-label; a dimension may get none)."""
    return Domains(**{dim: [n for n, p in probabilities.get(dim, {}).items() if p >= delta] for dim in DIMENSIONS})


# -- embedded --------------------------------------------------------------------------------------------

class EmbeddedClassifier:
    """The offline classifier behind the :class:`Classifier` interface; it makes no model calls (no cache)."""

    name = EMBEDDED
    template = None

    def __init__(self, taxonomy: Taxonomy, delta: float = DELTA, *, encoder: str | Encoder = "minilm") -> None:
        self.taxonomy, self.delta = taxonomy, delta
        self.encoder = Encoder(encoder) if isinstance(encoder, str) else encoder
        self._domain_classifier: Any = None

    def probabilities(self, texts: Sequence[str]) -> list[Probabilities]:
        """One full probability vector per text (6 decimals); the heads are trained or loaded on first use."""
        from misalign.build.embedded_classifier import DomainClassifier

        if self._domain_classifier is None:
            self._domain_classifier = DomainClassifier(self.encoder, self.taxonomy)
        probs = self._domain_classifier.predict_proba(texts)
        names = {dim: self.taxonomy.names(dim) for dim in DIMENSIONS}
        return [{dim: {n: round(float(v), 6) for n, v in zip(names[dim], probs[dim][i], strict=True)}
                 for dim in DIMENSIONS} for i in range(len(texts))]

    async def classify(self, prompts: Sequence[Prompt], *, cache: CallCache | None = None,
                       on_result: OnResult | None = None) -> Classification:
        vectors = self.probabilities([p.prompt for p in prompts])
        return Classification([p.model_copy(update={"probabilities": vec, "domains": assign(vec, self.delta)})
                               for p, vec in zip(prompts, vectors, strict=True)])


# -- chat models -----------------------------------------------------------------------------------------

def chat_messages(prompt: str, taxonomy: Taxonomy, template: str = TEMPLATE) -> list[dict[str, str]]:
    """One request per prompt carrying the whole taxonomy with definitions."""
    lines = []
    for dim in DIMENSIONS:
        lines.append(f"## {dim}")
        lines += [f"- {d.name}: {d.definition}" for d in taxonomy.dimension(dim)]
    return load_template(template).messages(taxonomy="\n".join(lines), prompt=prompt)


def parse_chat_answer(text: str, taxonomy: Taxonomy) -> Probabilities:
    """Full probability vectors from a JSON answer (unlisted domains 0). Raises ValueError when invalid."""
    obj = next((o for o in json_objects(text) if any(k in o for k in DIMENSIONS)), None)
    if obj is None:
        raise ValueError("no JSON object with safety/value/cultural keys")
    return {dim: _dimension_vector(obj.get(dim) or {}, dim, taxonomy) for dim in DIMENSIONS}


def _dimension_vector(given: Any, dim: str, taxonomy: Taxonomy) -> dict[str, float]:
    """One dimension of an answer: a ``{name: confidence}`` object (0-1 or a percentage) or a list of names."""
    vec = dict.fromkeys(taxonomy.names(dim), 0.0)
    if isinstance(given, list):  # names only: full confidence
        given = dict.fromkeys(map(str, given), 1.0)
    if not isinstance(given, dict):
        raise ValueError(f"{dim}: expected an object of domain -> confidence")
    for name, conf in given.items():
        d = taxonomy.resolve(dim, str(name))
        if d is None:
            if str(name).strip().casefold() in ("none", ""):
                continue
            raise ValueError(f"unknown {dim} domain {name!r}")
        try:
            c = float(conf)
        except (TypeError, ValueError):
            raise ValueError(f"{dim}/{name}: confidence {conf!r} is not a number") from None
        vec[d.name] = min(1.0, max(0.0, c / 100 if c > 1 else c))
    return vec


class ChatClassifier:
    """A chat model asked once per prompt; an invalid answer is asked once more, then recorded as a failure."""

    PARAMS = GenerationParams(temperature=0.0, max_tokens=400, response_format={"type": "json_object"})

    def __init__(self, model: ChatModel, taxonomy: Taxonomy, delta: float = DELTA, *,
                 template: str = TEMPLATE) -> None:
        self.model, self.taxonomy, self.delta = model, taxonomy, delta
        self.name = model.name
        self.template_name = template
        self.template = load_template(template)

    async def classify(self, prompts: Sequence[Prompt], *, cache: CallCache | None = None,
                       on_result: OnResult | None = None) -> Classification:
        answers, errors = await self._ask(prompts, cache, on_result)
        out = [p.model_copy(update={"probabilities": answers[i], "domains": assign(answers[i], self.delta),
                                    "provenance": {**p.provenance, "classifier": self.name}})
               if i in answers else p for i, p in enumerate(prompts)]
        failures = [{"id": prompts[i].id, "reason": r, "raw": raw} for i, (r, raw) in sorted(errors.items())]
        return Classification(out, failures)

    async def _ask(self, prompts: Sequence[Prompt], cache: CallCache | None, on_result: OnResult | None
                   ) -> tuple[dict[int, Probabilities], dict[int, tuple[str, str]]]:
        """Parsed answers and (reason, raw text) of the failures, by prompt index; invalid answers asked twice."""
        answers: dict[int, Probabilities] = {}
        errors: dict[int, tuple[str, str]] = {}
        todo = list(range(len(prompts)))
        for attempt in range(2):  # the attempt is part of the cache key, so the retry is a fresh call
            requests = [(chat_messages(prompts[i].prompt, self.taxonomy, self.template_name), self.PARAMS, attempt)
                        for i in todo]
            completions = await complete_many(self.model, requests, cache=cache, on_result=on_result)
            retry = []
            for i, c in zip(todo, completions, strict=True):
                if c.error:
                    errors[i] = (f"call failed: {c.error}", c.text)
                    continue
                try:
                    answers[i] = parse_chat_answer(c.text, self.taxonomy)
                    errors.pop(i, None)
                except ValueError as exc:
                    errors[i] = (str(exc), c.text)
                    retry.append(i)
            todo = retry
            if not todo:
                break
        return answers, errors


def micro_f1(gold: Sequence[Domains], pred: Sequence[Domains], dim: str) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over (prompt, domain) decisions of one dimension."""
    tp = fp = fn = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g.get(dim)), set(p.get(dim))
        tp += len(gs & ps)
        fp += len(ps - gs)
        fn += len(gs - ps)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "support": tp + fn}
