"""Stage I step 4: an aligned and a misaligned candidate response for every prompt, from a pool of generators.

Prompts are spread over the generators by a seeded, balanced assignment (one generator per prompt), or, with
``per_generator`` (as MisAlign-Profile does), every generator writes both sides of every prompt: one candidate per
(prompt, generator), its item id ``<prompt id>~<generator>``. Each generator is asked through the ``respond_v1``
template, told which domains are at stake (and, when rejection sampling regenerates a side, the judge's feedback).
Every call goes through ``complete_many`` and its SQLite cache.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from misalign.models import CallCache, GenerationParams, complete_many
from misalign.models.base import ChatModel, Completion
from misalign.records import Domains, Prompt
from misalign.templates import load_template

TEMPLATE = "respond_v1"
KINDS = ("aligned", "misaligned")
OnResult = Callable[[int, Completion], None]
"""Called with a request's index and its completion as each answer is known (cache hits included)."""
CandidateKey = tuple[int, str]
"""(candidate index, kind)."""


@dataclass(frozen=True)
class Sampling:
    """How candidate responses are sampled (the paper's settings by default)."""

    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512

    @property
    def params(self) -> GenerationParams:
        return GenerationParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                                seed=self.seed)


DEFAULT_SAMPLING = Sampling()
"""Temperature 0.7, top-p 0.9, at most 512 tokens, seed 0."""


def describe_domains(domains: Domains | None) -> str:
    """The domains at stake as one line (``safety: A, B; value: C``), for prompts to generators and judges."""
    if not domains or not domains.dimensions():
        return "no specific domain"
    return "; ".join(f"{dim}: {', '.join(domains.get(dim))}" for dim in domains.dimensions())


def respond_messages(prompt: Prompt, kind: str, feedback: str | None = None, template: str = TEMPLATE
                     ) -> list[dict[str, str]]:
    """Ask a generator for one candidate response of the given kind, told which domains are at stake."""
    tpl = load_template(template)
    note = tpl.render("feedback", feedback=feedback) + "\n\n" if feedback else ""
    return tpl.messages(task=tpl.render(kind), domains=describe_domains(prompt.domains), prompt=prompt.prompt,
                        feedback_note=note)


@dataclass
class Candidate:
    """A prompt with one candidate per kind and how each was made and judged."""

    prompt: Prompt
    generator: str
    item_id: str | None = None
    """The id its item gets when it is not the prompt's (per-generator mode: ``<prompt id>~<generator>``)."""
    texts: dict[str, str | None] = field(default_factory=dict)
    verdicts: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    rounds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The id of the item this candidate becomes."""
        return self.item_id or self.prompt.id


_CANDIDATE_FIELDS = ("generator", "item_id", "texts", "rounds", "verdicts", "errors")


def candidate_to_row(c: Candidate) -> dict[str, Any]:
    """A candidate as a flat row (the prompt record in full, so `misalign filter` can read it back); ``item_id``
    only when set, so default-mode rows keep their bytes."""
    from misalign.io import record_to_row

    return {**record_to_row(c.prompt), "generator": c.generator, **({"item_id": c.item_id} if c.item_id else {}),
            "texts": c.texts, "rounds": c.rounds, "verdicts": c.verdicts, "errors": c.errors}


def candidate_from_row(row: dict[str, Any]) -> Candidate:
    """The inverse of :func:`candidate_to_row`."""
    prompt = Prompt.model_validate({k: v for k, v in row.items() if k not in _CANDIDATE_FIELDS})
    return Candidate(prompt=prompt, generator=row["generator"], item_id=row.get("item_id"),
                     texts=dict(row.get("texts") or {}), verdicts=row.get("verdicts") or {k: [] for k in KINDS},
                     rounds=row.get("rounds") or dict.fromkeys(KINDS, 0), errors=row.get("errors") or {})


def assign_generators(n: int, generators: Sequence[str], seed: int) -> list[str]:
    """Seeded, balanced assignment: counts differ by at most one."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [""] * n
    for rank, i in enumerate(order):
        out[i] = generators[rank % len(generators)]
    return out


def per_generator_id(prompt_id: str, generator: str) -> str:
    """The item id of one generator's candidate in per-generator mode."""
    return f"{prompt_id}~{generator}"


def plan_candidates(prompts: Sequence[Prompt], generators: Sequence[str], *, seed: int = 0,
                    per_generator: bool = False) -> list[Candidate]:
    """The candidates of ``prompts``, each with its generator and no text yet: a seeded balanced assignment over the
    whole pool (so a shard of the list keeps the generators it has here); with ``per_generator``, one candidate per
    (prompt, generator), generators in name order within a prompt."""
    if per_generator:
        return [Candidate(prompt=p, generator=g, item_id=per_generator_id(p.id, g))
                for p in prompts for g in sorted(set(generators))]
    names = assign_generators(len(prompts), sorted(set(generators)), seed)
    return [Candidate(prompt=p, generator=g) for p, g in zip(prompts, names, strict=True)]


async def write_candidates(cands: list[Candidate], generators: dict[str, ChatModel], *,
                           sampling: Sampling = DEFAULT_SAMPLING, cache: CallCache | None = None,
                           on_result: OnResult | None = None) -> None:
    """Write both sides of every planned candidate (round 0), each with its own generator."""
    todo: dict[CandidateKey, str | None] = {(i, k): None for i in range(len(cands)) for k in KINDS}
    await generate(cands, generators, sampling.params, todo, 0, cache=cache, on_result=on_result)


async def respond(prompts: Sequence[Prompt], generators: dict[str, ChatModel], *, sampling: Sampling = DEFAULT_SAMPLING,
                  cache: CallCache | None = None, on_result: OnResult | None = None,
                  per_generator: bool = False) -> list[Candidate]:
    """An aligned and a misaligned candidate for each prompt (:func:`plan_candidates`, then
    :func:`write_candidates`)."""
    cands = plan_candidates(prompts, list(generators), seed=sampling.seed, per_generator=per_generator)
    await write_candidates(cands, generators, sampling=sampling, cache=cache, on_result=on_result)
    return cands


async def generate(cands: list[Candidate], generators: dict[str, ChatModel], params: GenerationParams,
                   todo: dict[CandidateKey, str | None], rnd: int, *, cache: CallCache | None = None,
                   on_result: OnResult | None = None) -> None:
    """(Re)write the sides in ``todo`` (key -> the judge's feedback, or None) with each candidate's generator.

    ``rnd`` is the round, recorded per side and part of the cache key. A failed or empty answer leaves the
    side's text None and its error recorded.
    """
    by_generator: dict[str, list[CandidateKey]] = {}
    for (i, kind) in todo:
        by_generator.setdefault(cands[i].generator, []).append((i, kind))
    for name, keys in sorted(by_generator.items()):
        requests = [(respond_messages(cands[i].prompt, kind, todo[(i, kind)]), params, rnd) for i, kind in keys]
        completions = await complete_many(generators[name], requests, cache=cache, on_result=on_result)
        for (i, kind), c in zip(keys, completions, strict=True):
            if c.error or not c.text.strip():
                cands[i].texts[kind] = None
                cands[i].errors[kind] = c.error or "empty response"
            else:
                cands[i].texts[kind] = c.text.strip()
                cands[i].errors.pop(kind, None)
            cands[i].rounds[kind] = rnd
