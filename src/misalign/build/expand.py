"""Stage I step 2: count prompts per domain and write new ones for the domains below a target.

A generator writes prompts for a domain through the ``expand_v1`` template, conditioned on its definition and on
up to 3 real prompts of it; the new prompts are classified again by the build's :class:`Classifier` (labels come
from one place) and kept only if they carry the domain they were written for.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from misalign.build.classify import Classification, Classifier
from misalign.io.answers import json_objects
from misalign.models import CallCache, GenerationParams, complete_many
from misalign.models.base import ChatModel, Completion, Request
from misalign.records import Prompt
from misalign.taxonomy import DIMENSIONS, Domain, Taxonomy
from misalign.templates import load_template

TEMPLATE = "expand_v1"
DomainKey = tuple[str, str]
"""(dimension, domain name)."""
CompleteRound = Callable[[int, list[Request]], Awaitable[list[Completion]]]
"""One round's generator calls: ``(round, requests)`` -> completions in request order, a failed call as a
:class:`Completion` with ``error`` (as :func:`~misalign.models.complete_many` returns it)."""
ClassifyRound = Callable[[int, list[Prompt]], Awaitable[Classification]]
"""One round's classification of the new prompts: ``(round, prompts)`` -> their classification, in order."""


def domain_counts(prompts: Sequence[Prompt], taxonomy: Taxonomy) -> dict[DomainKey, int]:
    """Prompts per (dimension, domain), every domain of the taxonomy present (0 when none)."""
    counts: Counter[DomainKey] = Counter()
    for p in prompts:
        counts.update(_domain_keys(p))
    return {(d.dimension, d.name): counts.get((d.dimension, d.name), 0) for d in taxonomy}


def _domain_keys(prompt: Prompt) -> list[DomainKey]:
    """The (dimension, domain) pairs assigned to a prompt."""
    if not prompt.domains:
        return []
    return [(dim, n) for dim in DIMENSIONS for n in prompt.domains.get(dim)]


def expand_messages(domain: Domain, exemplars: Sequence[str], n: int, template: str = TEMPLATE
                    ) -> list[dict[str, str]]:
    """Ask a generator for ``n`` new prompts of ``domain``, showing it the real ``exemplars``."""
    tpl = load_template(template)
    shots = "\n".join(f"- {e}" for e in exemplars) or tpl.render("no_exemplars")
    return tpl.messages(n=str(n), dimension=domain.dimension, domain=domain.name, definition=domain.definition,
                        exemplars=shots)


def parse_prompt_list(text: str) -> list[str]:
    """Prompts from a generator's JSON answer (an object with ``prompts`` or a bare list); [] if invalid."""
    for obj in json_objects(text):
        if isinstance(obj.get("prompts"), list):
            return [str(p).strip() for p in obj["prompts"] if str(p).strip()]
    try:
        value = json.loads(text[text.index("["): text.rindex("]") + 1])
        return [str(p).strip() for p in value if str(p).strip()] if isinstance(value, list) else []
    except ValueError:
        return []


@dataclass
class ExpandReport:
    """What expansion did, per domain id."""

    requested: dict[str, int] = field(default_factory=dict)
    generated: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    calls_failed: int = 0


@dataclass
class Expansion:
    """The result of :func:`expand`."""

    prompts: list[Prompt]
    """The new prompts kept, classified."""
    report: ExpandReport
    classify_failures: list[dict[str, Any]] = field(default_factory=list)
    """New prompts the classifier could not classify (dropped)."""


@dataclass
class _State:
    """What one expansion knows between rounds."""

    by_domain: dict[DomainKey, list[Prompt]]
    counts: dict[DomainKey, int]
    seen_text: set[str]
    budget: int


async def expand(prompts: list[Prompt], generator: ChatModel, taxonomy: Taxonomy, classifier: Classifier, *,
                 target_per_domain: int, max_new: int, seed: int = 0, per_request: int = 5, max_rounds: int = 3,
                 cache: CallCache | None = None, complete: CompleteRound | None = None,
                 classify: ClassifyRound | None = None) -> Expansion:
    """New prompts for every domain below ``target_per_domain``, until the target or ``max_new`` is reached.

    ``complete`` and ``classify`` run a round's generator calls and its classification (default: ``generator`` and
    ``classifier`` here, through ``cache``); the new prompts' provenance names ``generator`` either way."""
    complete = complete or (lambda _rnd, requests: complete_many(generator, requests, cache=cache))
    classify = classify or (lambda _rnd, new: classifier.classify(new, cache=cache))
    rng = random.Random(seed)
    result = Expansion([], ExpandReport())
    by_domain: dict[DomainKey, list[Prompt]] = {}
    for p in prompts:
        for key in _domain_keys(p):
            by_domain.setdefault(key, []).append(p)
    state = _State(by_domain, domain_counts(prompts, taxonomy), {p.prompt.strip().casefold() for p in prompts},
                   max_new)
    for rnd in range(max_rounds):
        needs = [(d, target_per_domain - state.counts[(d.dimension, d.name)]) for d in taxonomy
                 if state.counts[(d.dimension, d.name)] < target_per_domain]
        if not needs or state.budget <= 0:
            break
        requests, asked_for = _requests(needs, state, rng, per_request, seed, rnd)
        completions = await complete(rnd, requests)
        fresh = _new_prompts(asked_for, completions, state, result.report, generator.name, rnd)
        for d, need in needs:
            result.report.requested[d.id] = result.report.requested.get(d.id, 0) + need
        classification = await classify(rnd, [p for p, _ in fresh])
        result.classify_failures += classification.failures
        _keep(classification.prompts, [d for _, d in fresh], state, result)
    return result


def _requests(needs: list[tuple[Domain, int]], state: _State, rng: random.Random, per_request: int, seed: int,
              rnd: int) -> tuple[list[Request], list[tuple[Domain, list[str]]]]:
    """The generator requests of one round, and per request the domain and the ids of the exemplars shown."""
    params = GenerationParams(temperature=0.9, top_p=0.95, max_tokens=800, seed=seed + rnd)
    requests: list[Request] = []
    asked_for: list[tuple[Domain, list[str]]] = []
    for d, need in needs:
        pool = state.by_domain.get((d.dimension, d.name), [])
        shots = rng.sample(pool, min(3, len(pool)))
        for _ in range(-(-need // per_request)):
            requests.append((expand_messages(d, [s.prompt for s in shots], per_request), params, rnd))
            asked_for.append((d, [s.id for s in shots]))
    return requests, asked_for


def _new_prompts(asked_for: list[tuple[Domain, list[str]]], completions: list[Completion], state: _State,
                 report: ExpandReport, generator: str, rnd: int) -> list[tuple[Prompt, Domain]]:
    """Unseen prompts from the answers, within the budget, each with the domain it was written for."""
    fresh = []
    for (d, shot_ids), c in zip(asked_for, completions, strict=True):
        if c.error:
            report.calls_failed += 1
            continue
        for text in parse_prompt_list(c.text):
            key = text.casefold()
            if key in state.seen_text or state.budget <= 0:
                continue
            state.seen_text.add(key)
            state.budget -= 1
            k = report.generated.get(d.id, 0)
            report.generated[d.id] = k + 1
            fresh.append((Prompt(id=f"gen-{d.id}-{rnd}-{k}", prompt=text, provenance={
                "source": "expanded", "generator": generator, "domain": [d.dimension, d.name],
                "exemplars": shot_ids, "round": rnd}), d))
    return fresh


def _keep(classified: list[Prompt], written_for: list[Domain], state: _State, result: Expansion) -> None:
    """Keep the classified prompts that carry the domain they were written for, and count their domains."""
    for p, d in zip(classified, written_for, strict=True):
        if p.domains and d.name in p.domains.get(d.dimension):
            result.prompts.append(p)
            result.report.kept[d.id] = result.report.kept.get(d.id, 0) + 1
            for key in _domain_keys(p):
                state.counts[key] += 1
