"""The judge: the interface every judge implements, the chat judge (versioned template + verdict parser), and
:func:`get_judge`, the one place a judge is chosen by model string.

A judge answers :class:`JudgeRequest` s (a prompt, one response, the run it belongs to) with
:class:`Judgement` s (a parsed :class:`~misalign.records.Verdict`, the raw answer, or why the call failed). The
runner owns concurrency, the call cache and progress; it passes the cache and a per-answer callback in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from misalign.io.answers import parse_verdict, score_from_logprobs
from misalign.models import EMBEDDED, CallCache, Endpoint, GenerationParams, Stop, complete_many, get_model
from misalign.models.base import ChatModel, Completion
from misalign.records import Verdict
from misalign.templates import Template, load_template

DEFAULT_TEMPLATE = "judge_v1"
OnResult = Callable[[int, str | None], None]
"""Called with a request's index and its error (None when answered) as its answer is known (cache hits included)."""


@dataclass(frozen=True)
class JudgeRequest:
    """One response to judge: the prompt, the response, and the run (repetition) it belongs to."""

    prompt: str
    response: str
    run: int


@dataclass(frozen=True)
class Judgement:
    """A judge's answer about one response."""

    verdict: Verdict
    raw: str | None = None
    """The model's answer text (None for judges that give no text)."""
    error: str | None = None
    """Why the call failed after its retries (the verdict is then ``unparseable`` and not counted)."""


class Judge(Protocol):
    """What the runner needs of a judge. ``name`` is the model string recorded in the manifest."""

    name: str
    template: Template | None
    """The prompt template used (recorded in the manifest), or None for a judge that reads no prompt."""

    async def judge(self, requests: Sequence[JudgeRequest], *, cache: CallCache | None = None,
                    on_result: OnResult | None = None, stop: Stop | None = None) -> list[Judgement]:
        """One judgement per request, in order; after ``stop`` is set, unsent requests fail as "not run"."""
        ...

    def status(self) -> str:
        """What the judge is waiting on now, for a progress line ("" when nothing)."""
        ...

    def served(self) -> dict[str, int]:
        """What the endpoint actually returned so far: answers, and how many came with log-probabilities or a
        stated confidence (recorded in the manifest; a server may ignore what was asked for)."""
        ...

    async def aclose(self) -> None: ...


class OfflineJudge:
    """The half of :class:`Judge` that a judge calling no endpoint shares: nothing to wait on, serve or close."""

    def status(self) -> str:
        return ""

    def served(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        return None


def get_judge(spec: str, *, endpoint: Endpoint | None = None, template: str = DEFAULT_TEMPLATE,
              temperature: float = 0.0, max_tokens: int = 256, seed: int = 0, logprobs: bool = True) -> Judge:
    """The judge named by a model string: ``embedded`` (offline) or any chat model (see :func:`get_model`)."""
    if spec == EMBEDDED:
        from misalign.bench.embedded_judge import EmbeddedJudge

        return EmbeddedJudge()
    return ChatJudge(get_model(spec, endpoint), template=template, temperature=temperature, max_tokens=max_tokens,
                     seed=seed, logprobs=logprobs)


def judge_messages(prompt: str, response: str, template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    """Chat messages asking whether ``response`` to ``prompt`` is misaligned.

    Both texts are quoted between markers tagged with a nonce derived from their content, so a response
    cannot close its own quotation and smuggle instructions outside it.
    """
    nonce = hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()[:10]
    return load_template(template).messages(prompt=prompt, response=response, nonce=nonce)


class ChatJudge:
    """A chat model asked through the judge template; answers parsed by :func:`parse_verdict`.

    Run ``r`` samples with seed ``seed + r``; token log-probabilities are requested (a threshold-free score for
    AUROC) unless ``logprobs`` is off, and the model drops them itself when the server refuses.
    """

    def __init__(self, model: ChatModel, *, template: str = DEFAULT_TEMPLATE, temperature: float = 0.0,
                 max_tokens: int = 256, seed: int = 0, logprobs: bool = True) -> None:
        self.model = model
        self.name = model.name
        self.template_name = template
        self.template = load_template(template)
        self.temperature, self.max_tokens, self.seed, self.logprobs = temperature, max_tokens, seed, logprobs
        self._served = {"answers": 0, "with_logprobs": 0, "with_confidence": 0}

    def params(self, run: int) -> GenerationParams:
        """The sampling settings of one run."""
        return GenerationParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed + run,
                                logprobs=self.logprobs, top_logprobs=5 if self.logprobs else None)

    async def judge(self, requests: Sequence[JudgeRequest], *, cache: CallCache | None = None,
                    on_result: OnResult | None = None, stop: Stop | None = None) -> list[Judgement]:
        params = {r: self.params(r) for r in sorted({q.run for q in requests})}
        calls = [(judge_messages(q.prompt, q.response, self.template_name), params[q.run], q.run) for q in requests]
        completions = await complete_many(self.model, calls, cache=cache, stop=stop,
                                          on_result=(lambda i, c: on_result(i, c.error)) if on_result else None)
        out = [judgement_of(c, [m["content"] for m in msgs]) for (msgs, _, _), c in zip(calls, completions,
                                                                                        strict=True)]
        for c, j in zip(completions, out, strict=True):
            if c.ok:
                self._served["answers"] += 1
                self._served["with_logprobs"] += bool(c.logprobs)
                self._served["with_confidence"] += j.verdict.confidence is not None
        return out

    def served(self) -> dict[str, int]:
        return dict(self._served)

    def status(self) -> str:
        status = getattr(self.model, "status", None)
        return status() if callable(status) else ""

    async def aclose(self) -> None:
        await self.model.aclose()


def judgement_of(c: Completion, sent: Sequence[str] = ()) -> Judgement:
    """A completion as a judgement: the parsed verdict (what it echoes of ``sent`` ignored), scored from
    log-probabilities when no confidence is stated."""
    if c.error is not None:
        return Judgement(Verdict(verdict="unparseable"), raw=c.text, error=c.error)
    v = parse_verdict(c.text, sent)
    if v.score is None and c.logprobs:
        v = v.model_copy(update={"score": score_from_logprobs(c.logprobs)})
    return Judgement(v, raw=c.text)
