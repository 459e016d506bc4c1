"""Stage I step 1: give every prompt a probability per domain and assign those with p >= delta.

A :class:`Classifier` turns prompts into classified prompts plus the failures it could not classify. Two
implement it: :class:`ChatClassifier` (any chat model, asked once per prompt through the ``classify_v2``
template for a JSON object of the domains that apply, validated against the taxonomy; an invalid answer gets one
repair message naming what was wrong) and :class:`EmbeddedClassifier` (offline;
:class:`misalign.build.embedded_classifier.DomainClassifier`). :func:`get_classifier` is the one place a
classifier is chosen by model string.

Templates: ``classify_v2`` (the default) lists every domain by name with a short definition (its first clause,
at most :data:`SHORT_WORDS` words): 38% of ``classify_v1``'s characters (1,598 SmolLM2 tokens against 3,943
for the default taxonomy). ``classify_v1`` lists full definitions and stays loadable by name for old caches and
builds. Both get both slots (``taxonomy``, ``taxonomy_short``) and use the one they name.

Semantic types (MisAlign-Profile; off unless asked for): a chat classifier asks each prompt a second, separate
question through ``classify_type_v1`` (``{"semantic_type": "object" | "attribute" | "relation"}``, validated and
repaired like the domain answer). A separate request rather than a variant of ``classify_v2``: the domain request
stays byte for byte what it was, so turning types on reuses every cached domain answer, and each answer has one
small schema to validate and repair. The embedded classifier reads a type head from its shipped head (``type/W``,
``type/b``, ``type/ids``) and keeps the softmax in the prompt's provenance (``semantic_type_probabilities``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from misalign.errors import ConfigError
from misalign.io.answers import json_objects
from misalign.models import EMBEDDED, CallCache, GenerationParams, ModelPool, complete_many
from misalign.models.base import ChatModel, Completion, Message
from misalign.models.embedded import Encoder
from misalign.records import SEMANTIC_TYPES, Domains, Prompt, SemanticType
from misalign.taxonomy import DIMENSIONS, Taxonomy
from misalign.templates import Template, load_template

if TYPE_CHECKING:
    from misalign.models.heads import Head

DELTA = 0.5
"""Domains with a probability of at least this are assigned."""
TEMPLATE = "classify_v2"
"""The default classification template (``classify_v1``, with full definitions, stays loadable by name)."""
TYPE_TEMPLATE = "classify_type_v1"
"""The semantic-type question a chat classifier asks when semantic types are on."""
SHORT_WORDS = 12
"""The most words of a domain's definition that ``classify_v2`` shows."""
_TRAILING_WORDS = frozenset({"a", "an", "and", "as", "at", "by", "for", "from", "in", "of", "on", "or", "such", "the",
                             "to", "with"})
"""Little words a cut definition does not end on."""
REPAIR_ERROR_CHARS = 300
"""The longest validation error quoted in a repair message."""
OnResult = Callable[[int, Completion | None], None]
"""Called with a prompt's index and a completion as each answer is known (cache hits included): once per call,
so twice for a prompt that got a repair message."""
Probabilities = dict[str, dict[str, float]]
"""Dimension -> domain name -> probability, every domain of the taxonomy present."""
A = TypeVar("A")
"""A parsed answer (probabilities or a semantic type)."""


@dataclass
class Classification:
    """What a classifier made of a list of prompts."""

    prompts: list[Prompt]
    """The prompts in input order, with probabilities and domains (a failed one keeps ``domains=None``)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """One ``{"id", "reason", "raw"}`` per prompt that could not be classified; a semantic type that could not be
    read is one ``{"id", "field": "semantic_type", "reason", "raw"}``."""


class Classifier(Protocol):
    """What the classify and expand steps need of a classifier. ``name`` is its model string."""

    name: str
    template: Template | None
    """The prompt template used (recorded in the build manifest), or None for one that calls no model."""
    semantic_types: bool
    """Whether each prompt also gets a ``semantic_type``."""
    type_template: Template | None
    """The semantic-type template used, or None (types off, or a classifier that calls no model)."""

    async def classify(self, prompts: Sequence[Prompt], *, cache: CallCache | None = None,
                       on_result: OnResult | None = None) -> Classification:
        """Probabilities and assigned domains for every prompt."""
        ...


def get_classifier(spec: str, taxonomy: Taxonomy, *, pool: ModelPool | None = None, delta: float = DELTA,
                   encoder: str = "minilm", semantic_types: bool = False) -> Classifier:
    """The classifier named by a model string: ``embedded`` (offline, with ``encoder``) or a chat model of ``pool``;
    ``semantic_types`` gives each prompt a semantic type too."""
    if spec == EMBEDDED:
        return EmbeddedClassifier(taxonomy, delta, encoder=encoder, semantic_types=semantic_types)
    if pool is None:
        raise ValueError(f"the chat classifier {spec!r} needs a ModelPool")
    return ChatClassifier(pool.get(spec), taxonomy, delta, semantic_types=semantic_types)


def assign(probabilities: Probabilities, delta: float = DELTA) -> Domains:
    """Domains whose probability is at least ``delta`` (multi-label; a dimension may get none)."""
    return Domains(**{dim: [n for n, p in probabilities.get(dim, {}).items() if p >= delta] for dim in DIMENSIONS})


# -- embedded --------------------------------------------------------------------------------------------

class EmbeddedClassifier:
    """The offline classifier behind the :class:`Classifier` interface; it makes no model calls (no cache)."""

    name = EMBEDDED
    template = None
    type_template = None

    def __init__(self, taxonomy: Taxonomy, delta: float = DELTA, *, encoder: str | Encoder = "minilm",
                 semantic_types: bool = False, head: Head | None = None) -> None:
        self.taxonomy, self.delta, self.semantic_types = taxonomy, delta, semantic_types
        self.encoder = Encoder(encoder) if isinstance(encoder, str) else encoder
        self._head = head  # a Head to use instead of the shipped one (tests, training)
        self._domain_classifier: Any = None

    def _heads(self) -> Any:
        """The domain classifier, loaded on first use; a ConfigError if types are on and its head has none."""
        from misalign.build.embedded_classifier import DomainClassifier

        if self._domain_classifier is None:
            heads = DomainClassifier(self.encoder, self.taxonomy, self._head)
            if self.semantic_types and not heads.has_type_head:
                raise ConfigError(f"the shipped {heads.head.name} head has no semantic-type head (type/W, type/b): "
                                  "--semantic-types needs a chat classifier until one ships")
            self._domain_classifier = heads
        return self._domain_classifier

    def probabilities(self, texts: Sequence[str]) -> list[Probabilities]:
        """One full probability vector per text (6 decimals); the heads are trained or loaded on first use."""
        probs = self._heads().predict_proba(texts)
        names = {dim: self.taxonomy.names(dim) for dim in DIMENSIONS}
        return [{dim: {n: round(float(v), 6) for n, v in zip(names[dim], probs[dim][i], strict=True)}
                 for dim in DIMENSIONS} for i in range(len(texts))]

    async def classify(self, prompts: Sequence[Prompt], *, cache: CallCache | None = None,
                       on_result: OnResult | None = None) -> Classification:
        texts = [p.prompt for p in prompts]
        self._embed_in_chunks(texts, on_result)
        vectors = self.probabilities(texts)
        out = [p.model_copy(update={"probabilities": vec, "domains": assign(vec, self.delta)})
               for p, vec in zip(prompts, vectors, strict=True)]
        if self.semantic_types:
            out = [p.model_copy(update=_typed(p, row)) for p, row in zip(out, self._heads().type_proba(texts),
                                                                         strict=True)]
        return Classification(out)

    def _embed_in_chunks(self, texts: list[str], on_result: OnResult | None, chunk: int = 256) -> None:
        """Embed the distinct new texts, shortest first, ``chunk`` at a time (one encoder call each, so a pool
        of any size shows progress), telling ``on_result`` about each prompt whose text is done."""
        self._heads()  # exemplars and definitions first
        on_result = on_result or (lambda _i, _c: None)
        where: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            where.setdefault(t, []).append(i)
        todo = sorted((t for t in where if t not in self.encoder.memo), key=len)
        for t in (t for t in where if t in self.encoder.memo):
            for i in where[t]:
                on_result(i, None)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            self.encoder.embed(part)
            for t in part:
                for i in where[t]:
                    on_result(i, None)


def _typed(prompt: Prompt, proba: Any) -> dict[str, Any]:
    """The update giving ``prompt`` the most probable semantic type, the softmax kept in its provenance."""
    best = max(range(len(SEMANTIC_TYPES)), key=lambda k: proba[k])  # the first of equal ones
    return {"semantic_type": SEMANTIC_TYPES[best], "provenance": {
        **prompt.provenance, "semantic_type_probabilities": {t: round(float(p), 6)
                                                             for t, p in zip(SEMANTIC_TYPES, proba, strict=True)}}}


# -- chat models -----------------------------------------------------------------------------------------

def chat_messages(prompt: str, taxonomy: Taxonomy, template: str = TEMPLATE) -> list[dict[str, str]]:
    """One request per prompt carrying the whole taxonomy (short definitions in v2, full ones in v1)."""
    return load_template(template).messages(prompt=prompt, **taxonomy_slots(taxonomy))


@lru_cache(maxsize=8)
def taxonomy_slots(taxonomy: Taxonomy) -> dict[str, str]:
    """The taxonomy as template slots: ``taxonomy`` (full definitions) and ``taxonomy_short`` (short ones)."""
    full: list[str] = []
    short: list[str] = []
    for dim in DIMENSIONS:
        full.append(f"## {dim}")
        short.append(f"## {dim}")
        for d in taxonomy.dimension(dim):
            full.append(f"- {d.name}: {d.definition}")
            short.append(f"- {d.name}: {short_definition(d.definition)}")
    return {"taxonomy": "\n".join(full), "taxonomy_short": "\n".join(short)}


def short_definition(definition: str, max_words: int = SHORT_WORDS) -> str:
    """A definition's first clause (up to the first ``:``, ``;`` or sentence end), at most ``max_words`` words.

    A clause that is still too long is cut at its last comma within the limit ("Fairs, bazaars, night markets,
    street markets"), or, with no comma there, at the limit less any trailing little word ("or", "of", ...).
    """
    clause = re.split(r"[:;]|\.(?:\s|$)", definition.strip(), maxsplit=1)[0].strip()
    words = clause.split()
    if len(words) <= max_words:
        return clause
    cut = " ".join(words[:max_words]).rstrip(",")
    if "," in cut:
        return cut[: cut.rfind(",")]
    kept = cut.split()
    while len(kept) > 1 and kept[-1].casefold() in _TRAILING_WORDS:
        kept.pop()
    return " ".join(kept)


def parse_chat_answer(text: str, taxonomy: Taxonomy) -> Probabilities:
    """Full probability vectors from a JSON answer (unlisted domains 0). Raises ValueError when invalid."""
    obj = next((o for o in json_objects(text) if any(k in o for k in DIMENSIONS)), None)
    if obj is None:
        raise ValueError("no JSON object with safety/value/cultural keys")
    return {dim: _dimension_vector(obj.get(dim) or {}, dim, taxonomy) for dim in DIMENSIONS}


def parse_type_answer(text: str) -> SemanticType:
    """The semantic type of a JSON answer ``{"semantic_type": ...}`` (any case). Raises ValueError when invalid."""
    obj = next((o for o in json_objects(text) if "semantic_type" in o), None)
    if obj is None:
        raise ValueError("no JSON object with a semantic_type key")
    value = str(obj["semantic_type"]).strip().casefold()
    if value not in SEMANTIC_TYPES:
        raise ValueError(f"semantic_type {obj['semantic_type']!r} is not one of {', '.join(SEMANTIC_TYPES)}")
    return value  # type: ignore[return-value]


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
    """A chat model asked once per prompt (twice with semantic types: the type is its own request). An invalid
    answer gets one repair message (the conversation goes on with the answer and the validation error); a failed
    call gets none. What is still invalid is a failure."""

    PARAMS = GenerationParams(temperature=0.0, max_tokens=400, response_format={"type": "json_object"})

    def __init__(self, model: ChatModel, taxonomy: Taxonomy, delta: float = DELTA, *,
                 template: str = TEMPLATE, semantic_types: bool = False) -> None:
        self.model, self.taxonomy, self.delta = model, taxonomy, delta
        self.name = model.name
        self.template_name = template
        self.template = load_template(template)
        # a template without a repair message of its own (classify_v1, a user's) borrows the default's
        self.repair_template = self.template if "repair" in self.template.sections else load_template(TEMPLATE)
        self.semantic_types = semantic_types
        self.type_template = load_template(TYPE_TEMPLATE) if semantic_types else None

    async def classify(self, prompts: Sequence[Prompt], *, cache: CallCache | None = None,
                       on_result: OnResult | None = None) -> Classification:
        asked = {i: chat_messages(p.prompt, self.taxonomy, self.template_name) for i, p in enumerate(prompts)}
        answers, errors = await self._ask(asked, lambda text: parse_chat_answer(text, self.taxonomy),
                                          self.repair_template, cache, on_result)
        types: dict[int, SemanticType] = {}
        type_errors: dict[int, tuple[str, str]] = {}
        if self.type_template is not None:
            asked = {i: self.type_template.messages(prompt=p.prompt) for i, p in enumerate(prompts)}
            types, type_errors = await self._ask(asked, parse_type_answer, self.type_template, cache, on_result)
        out = []
        for i, p in enumerate(prompts):
            update: dict[str, Any] = {"semantic_type": types[i]} if i in types else {}
            if i in answers:
                update.update(probabilities=answers[i], domains=assign(answers[i], self.delta),
                              provenance={**p.provenance, "classifier": self.name})
            out.append(p.model_copy(update=update) if update else p)
        failures = sorted(
            [(i, 0, {"id": prompts[i].id, "reason": r, "raw": raw}) for i, (r, raw) in errors.items()]
            + [(i, 1, {"id": prompts[i].id, "field": "semantic_type", "reason": r, "raw": raw})
               for i, (r, raw) in type_errors.items()], key=lambda f: f[:2])
        return Classification(out, [f for _, _, f in failures])

    def repair_messages(self, asked: list[Message], answer: str, error: str, template: Template | None = None
                        ) -> list[Message]:
        """The conversation continued: the invalid ``answer`` as the assistant's turn, then what was wrong (the
        ``repair`` section of ``template``, by default the domain question's)."""
        if len(error) > REPAIR_ERROR_CHARS:
            error = error[: REPAIR_ERROR_CHARS - 3] + "..."
        repair = (template or self.repair_template).render("repair", error=error)
        return [*asked, {"role": "assistant", "content": answer}, {"role": "user", "content": repair}]

    async def _ask(self, asked: dict[int, list[Message]], parse: Callable[[str], A], repair: Template,
                   cache: CallCache | None, on_result: OnResult | None
                   ) -> tuple[dict[int, A], dict[int, tuple[str, str]]]:
        """Parsed answers (``parse`` raises ValueError on an invalid one) and (reason, raw text) of the failures,
        by prompt index.

        Round one asks every prompt; round two sends the repair conversation of each valid call with an invalid
        answer (a failed call is not repaired: the server, not the answer, was the problem). A repair request
        has more messages, so it is cached under its own key and a re-run asks nothing again.
        """
        answers: dict[int, A] = {}
        errors: dict[int, tuple[str, str]] = {}
        for repair_round in (False, True):
            todo = list(asked)
            completions = await complete_many(self.model, [(asked[i], self.PARAMS, 0) for i in todo], cache=cache,
                                              on_result=_by_prompt(on_result, todo))
            repairs: dict[int, list[Message]] = {}
            for i, c in zip(todo, completions, strict=True):
                parsed, why = _read(c, parse)
                if parsed is not None:
                    answers[i] = parsed
                    errors.pop(i, None)
                    continue
                raw = c.text or errors.get(i, ("", ""))[1]  # a failed repair call keeps the answer it repairs
                errors[i] = (f"{why} (after a repair message)" if repair_round else why, raw)
                if c.ok and not repair_round:
                    repairs[i] = self.repair_messages(asked[i], c.text, why, repair)
            asked = repairs
            if not asked:
                break
        return answers, errors



def _read(completion: Completion, parse: Callable[[str], A]) -> tuple[A | None, str]:
    """The parsed answer, or None and why it has none (the call failed, or the answer is invalid)."""
    if completion.error:
        return None, f"call failed: {completion.error}"
    try:
        return parse(completion.text), ""
    except ValueError as exc:
        return None, str(exc)


def _by_prompt(on_result: OnResult | None, todo: list[int]) -> OnResult | None:
    """``on_result`` called with the prompt's index instead of the index of the request within its round."""
    if on_result is None:
        return None
    return lambda j, completion: on_result(todo[j], completion)


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
