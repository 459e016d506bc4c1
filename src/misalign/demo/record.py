"""The typed record of a ``misalign rate`` run directory (Demo-SafetyBench).

- ``manifest.json``: :class:`RateManifest` (``kind: "rate"`` tells it from an eval run directory);
- ``ratings.jsonl``: one :class:`RatingRow` per model, conversation and framing (``plain``: no framing);
- ``metrics.json``: :class:`RateMetrics` (top-level keys ``icc``, ``rho``, ``ds``, ``dpd``, ``eod``,
  ``agreement``, ``unsafe_rates``, ``counts``, ``models``);
- ``cache.sqlite``: every model call (a re-run asks no answered call again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RATE_RECORD_VERSION = 1
PLAIN = "plain"
"""The framing name of the rating without a demographic persona."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RatingRow(_Strict):
    """One model's rating of one conversation under one framing (a line of ratings.jsonl)."""

    model: str
    """The model string."""
    item_id: str
    """The conversation."""
    framing: str
    """``plain``, or the framing's key (``age=…; gender=…; race=…; education=…``)."""
    unsafe: bool | None
    """The model's yes/no (None: unparseable or failed)."""
    probability: float | None
    """The model's probability that the final response is unsafe (its yes/no as 1/0 when it gave none)."""
    raw: str | None
    """The model's answer."""
    error: str | None
    """Why the call failed after its retries."""


class Stat(_Strict):
    """One figure with its 95% bootstrap interval (conversations resampled) and the conversations it rests on."""

    value: float | None
    """The figure (null when undefined)."""
    ci95: list[float | None]
    """[low, high] percentile bootstrap interval."""
    n: int
    """Conversations used."""


class GroupFigure(_Strict):
    """A fairness figure over the groups of one attribute."""

    value: float | None
    """The max-min spread over the attribute's groups (null when undefined)."""
    ci95: list[float | None]
    """[low, high] percentile bootstrap interval."""
    rates: dict[str, float] = Field(default_factory=dict)
    """DPD: each group's rate of unsafe predictions."""
    tpr: dict[str, float] = Field(default_factory=dict)
    """EOD: each group's true positive rate."""
    fpr: dict[str, float] = Field(default_factory=dict)
    """EOD: each group's false positive rate."""


class Fairness(_Strict):
    """DPD or EOD of one model: the worst attribute's figure, with every attribute's."""

    value: float | None
    """max over attributes of their figure (null when undefined)."""
    ci95: list[float | None]
    """[low, high] interval of that maximum (recomputed in every resample)."""
    attribute: str | None
    """The attribute with the largest figure."""
    by_attribute: dict[str, GroupFigure]
    """Per attribute (age, gender, race, education, locale)."""


class Agreement(_Strict):
    """How far a model under one framing agrees with the human raters of that group."""

    agreement: float | None
    """Share of the group's yes/no ratings the model's yes/no equals."""
    kappa: float | None
    """Cohen's kappa between the model's and the raters' yes/no over those ratings."""
    n: int
    """Ratings compared."""


class CallSummary(_Strict):
    """One model's calls."""

    asked: int
    failed: int
    unparseable: int


class RateCounts(_Strict):
    """What the run covered."""

    conversations: int
    raters: int
    ratings: int
    """Human ratings (rows of the file)."""
    framings: int
    """Distinct demographic profiles the models were framed as (the plain rating is extra)."""
    calls: dict[str, CallSummary]


class RateMetrics(_Strict):
    """metrics.json of a ``misalign rate`` run. Definitions: :mod:`misalign.demo.metrics`, docs/METRICS.md."""

    models: list[str]
    """The models, in command-line order."""
    icc: dict[str, dict[str, Stat]]
    """``vs_human``: per model, ICC(2,1) of its plain unsafe probabilities with the human mean unsafe rate per
    conversation; ``between_models``: per pair ``A vs B``, of the two models' plain probabilities."""
    rho: dict[str, dict[str, Stat]]
    """Spearman's ρ, the same pairs as ``icc``."""
    ds: dict[str, Stat]
    """Per model, demographic sensitivity (mean over conversations of the max-min spread across framings)."""
    dpd: dict[str, Fairness]
    """Per model, demographic parity difference of its framed yes/no across the groups of each attribute."""
    eod: dict[str, dict[str, Fairness]]
    """Per model, equalized odds difference against ``safety_gold`` and against ``human_majority`` (the majority of
    the raters of the point's group)."""
    agreement: dict[str, dict[str, Agreement]]
    """Per model, per framing (and ``plain``, against all raters): agreement with the human raters of that group."""
    unsafe_rates: dict[str, dict[str, float | None]]
    """``humans`` and each model: the unsafe rate of each group (``gender=Woman``, ...)."""
    counts: RateCounts
    """What the run covered."""

    def dumps(self) -> str:
        """Deterministic JSON text."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


class RateManifest(BaseModel):
    """manifest.json of a ``misalign rate`` run."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    kind: Literal["rate"] = "rate"
    """Tells a rate run directory from an eval one."""
    record_version: int = RATE_RECORD_VERSION
    misalign_version: str
    created: str
    python: str | None = None
    platform: str | None = None
    models: list[str]
    """The rater models."""
    dataset: dict[str, Any]
    """source, sha256, variant, conversations, raters, framings."""
    template: dict[str, str | None]
    """name and sha256 of the rater template."""
    config: dict[str, Any]
    """Settings that decide the answers."""
    endpoint: dict[str, Any] = Field(default_factory=dict)
    command: list[str] = Field(default_factory=list)


def is_rate_run(path: Path) -> bool:
    """Whether ``path`` is a run directory written by ``misalign rate``."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8")).get("kind") == "rate"
    except (OSError, ValueError, AttributeError):
        return False


def load_rate_run(path: Path) -> tuple[RateManifest, RateMetrics]:
    """Read and validate a rate run directory; ValueError naming the file and field of a problem."""
    out = []
    for name, model in (("manifest.json", RateManifest), ("metrics.json", RateMetrics)):
        f = Path(path) / name
        try:
            out.append(model.model_validate_json(f.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ValueError(f"{f}: cannot read: {exc}") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{f}: field {'.'.join(map(str, err['loc'])) or '(top level)'!r}: {err['msg']}; not a "
                             f"{name} of misalign rate") from None
    return out[0], out[1]  # type: ignore[return-value]
