"""The typed run record: what ``misalign eval`` writes to a run directory and every reader reads back.

- ``results.jsonl``: one :class:`ResultRow` per judged response and run;
- ``metrics.json``: :class:`Metrics` (per-scope :class:`Block` s, per-run figures, CIs, counts);
- ``manifest.json``: :class:`Manifest` (versions, model, dataset, seeds, template, settings, command).

The runner writes these models; the console, the report and ``misalign report`` read them through
:func:`load_run`, which validates and names the file and field of anything wrong. Figure fields are generated from
:data:`misalign.bench.metrics.METRICS`, so a new metric appears in every block without touching this file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from misalign.bench.metrics import METRICS
from misalign.records import Domains, Label, SemanticType, VerdictLabel

RECORD_VERSION = 2
"""The layout version written to manifest.json; a reader refuses newer ones. Version 1 is the first typed layout
(earlier run directories already match it); version 2 adds ``by_semantic_type`` and ``trade_offs`` to metrics.json
and ``semantic_type`` to results rows. Those fields have defaults, so version-1 directories load as they are
(no converter needed); an older misalign refuses a version-2 directory, asking for an upgrade."""
Side = Literal["aligned", "misaligned", "response"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ResultRow(_Strict):
    """One judged response in one run (a line of results.jsonl)."""

    run: int
    """Run index (0-based)."""
    seed: int
    """The run's seed (first seed + run)."""
    item_id: str
    """Id of the item (or labelled response) judged."""
    side: Side
    """Which response of a paired item (``aligned``/``misaligned``), or ``response`` for a labelled one."""
    label: Label
    """Gold label."""
    verdict: VerdictLabel | Literal["failed"]
    """The parsed verdict; ``failed`` when the call failed after its retries (see ``error``)."""
    flagged: bool | None
    """Flagged misaligned (unparseable answers by the run's policy); None when not counted: a failed call, or an
    unparseable answer under the ``exclude`` policy."""
    score: float | None
    """P(misaligned) from stated confidence or token log-probabilities, for AUROC."""
    confidence: float | None
    """Stated confidence in the verdict."""
    flags: dict[str, bool] | None
    """Per-dimension flags, when the judge gave them."""
    reason: str | None
    """The judge's one-sentence reason, when given."""
    raw: str | None
    """The judge's raw answer (None for judges that give no text)."""
    error: str | None
    """Why the call failed after its retries (then the row is not counted)."""
    prompt: str
    """The prompt shown to the judge."""
    response: str
    """The response judged."""
    domains: Domains
    """The item's domains (never shown to the judge)."""
    semantic_type: SemanticType | None = None
    """The item's MisAlign-Profile semantic type, never shown to the judge (object, attribute or relation; None when
    not assigned, and in rows written before semantic types)."""


def _figure_fields(kind: type, doc: str) -> dict[str, Any]:
    return {m.name: (kind, Field(description=f"{m.doc} ({doc})")) for m in METRICS}


class _Figured(_Strict):
    def figure(self, name: str) -> float | None:
        """A metric's value by name."""
        return getattr(self, name)


Figures = create_model("Figures", __base__=_Figured, **_figure_fields(float | None, "null when undefined"))
"""One value per metric (a run's figures, or standard deviations over runs)."""
Intervals = create_model("Intervals", __base__=_Strict,
                         **_figure_fields(list[float | None], "95% bootstrap interval [low, high]"))
"""A [low, high] interval per metric."""


class _BlockBase(_Figured):
    @property
    def n(self) -> int:
        """Judged responses of run 0 in this scope."""
        return self.n_misaligned + self.n_aligned  # type: ignore[attr-defined]


Block = create_model(
    "Block", __base__=_BlockBase,
    **_figure_fields(float | None, "mean over runs; null when undefined"),
    n_misaligned=(int, Field(description="Misaligned responses counted in run 0.")),
    n_aligned=(int, Field(description="Aligned responses counted in run 0.")),
    std=(Figures, Field(description="Standard deviation of each metric over runs (0 for one run).")),
    auroc=(float | None, Field(description="AUROC of the scores, mean over runs; null without scores.")),
    unparseable=(int, Field(description="Answers that could not be parsed (all runs).")),
    failed=(int, Field(description="Calls that failed after their retries (all runs).")),
)
"""The figures of one scope: all responses, a dimension, a domain, or items carrying all three dimensions."""


class RunFigures(_Strict):
    """The figures of one run, per headline scope."""

    run: int
    """Run index."""
    seed: int
    """The run's seed."""
    overall: Figures  # type: ignore[valid-type]
    """All responses."""
    safety: Figures  # type: ignore[valid-type]
    """Items carrying a safety domain."""
    value: Figures  # type: ignore[valid-type]
    """Items carrying a value domain."""
    cultural: Figures  # type: ignore[valid-type]
    """Items carrying a cultural domain."""
    all_three: Figures  # type: ignore[valid-type]
    """Items carrying a domain of every dimension."""
    by_semantic_type: dict[str, Figures] = Field(default_factory=dict)  # type: ignore[valid-type]
    """Per semantic type (``object``, ``attribute``, ``relation``); empty in runs written before semantic types."""


class ScopeIntervals(_Strict):
    """95% bootstrap intervals of the headline scopes."""

    overall: Intervals  # type: ignore[valid-type]
    """All responses."""
    by_dimension: dict[str, Intervals]  # type: ignore[valid-type]
    """Per dimension."""
    all_three: Intervals  # type: ignore[valid-type]
    """Items carrying a domain of every dimension."""
    by_semantic_type: dict[str, Intervals] = Field(default_factory=dict)  # type: ignore[valid-type]
    """Per semantic type; empty in runs written before semantic types."""


class TradeOff(_Strict):
    """The trade-offs between dimensions in one scope (fractions, like AS; null when undefined). Our definitions:
    see :func:`misalign.bench.metrics.spread_of` and :func:`~misalign.bench.metrics.joint_drop_of`."""

    spread: float | None
    """Best minus worst per-dimension Alignment Score (null unless all three are defined)."""
    spread_ci95: list[float | None]
    """95% bootstrap interval [low, high] of ``spread`` (items resampled)."""
    joint_drop: float | None
    """Mean of the three per-dimension AS minus the AS on items carrying all three dimensions."""
    joint_drop_ci95: list[float | None]
    """95% bootstrap interval [low, high] of ``joint_drop``."""


class TradeOffs(_Strict):
    """Trade-offs between dimensions, overall and within each semantic type."""

    overall: TradeOff
    """All items."""
    by_semantic_type: dict[str, TradeOff]
    """Items of each semantic type (``object``, ``attribute``, ``relation``)."""


class CallCounts(_Strict):
    """What happened to the calls of a run directory (all runs together)."""

    items: int
    """Items (or labelled responses) in the dataset."""
    responses: int
    """Responses judged per run."""
    runs: int
    """Runs."""
    judged: int
    """Answers counted in the metrics."""
    failed: int
    """Calls that failed after their retries."""
    unparseable: int
    """Answers that could not be parsed."""
    unparseable_policy: Literal["aligned", "misaligned", "exclude"]
    """How unparseable answers were counted."""
    scored: int
    """Counted answers with a score (for AUROC)."""
    failures: dict[str, int] = Field(default_factory=dict)
    """Failed calls by cause (the error after the last retry), most common first."""


class Metrics(_Strict):
    """metrics.json: figures micro-averaged over responses within a run, then averaged over runs."""

    overall: Block  # type: ignore[valid-type]
    """All responses."""
    by_dimension: dict[str, Block]  # type: ignore[valid-type]
    """Per dimension: responses of items carrying a domain of it."""
    by_domain: dict[str, dict[str, Block]]  # type: ignore[valid-type]
    """Per dimension, per domain present in the data."""
    all_three: Block  # type: ignore[valid-type]
    """Items carrying a domain of every dimension (the joint case)."""
    by_semantic_type: dict[str, Block] = Field(default_factory=dict)  # type: ignore[valid-type]
    """Per semantic type (``object``, ``attribute``, ``relation``, always all three): responses of items of that
    type; untyped items are in none. Empty in runs written before semantic types."""
    trade_offs: TradeOffs | None = None
    """Trade-offs between dimensions (spread, joint drop) with CIs; null in runs written before them."""
    runs: list[RunFigures]
    """Each run's figures."""
    ci95: ScopeIntervals
    """Bootstrap intervals (items resampled)."""
    counts: CallCounts
    """Calls, answers and how unparseable ones were counted."""

    def dumps(self) -> str:
        """Deterministic JSON text (fixed key order, rounded floats): equal runs give equal bytes."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


class DatasetRef(BaseModel):
    """Which data a run judged."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    source: str
    """``bundled`` or the file given."""
    sha256: str
    """Hash of the source files' bytes."""
    shape: str
    """The detected layout (misalign, savacu, hh-rlhf, labelled)."""
    items: int
    """Items judged."""
    split: str | None = None
    """The split evaluated (``all``: the whole source, also when it has no splits)."""
    rejected: int = 0
    """Malformed rows skipped on load (``--skip-bad``)."""
    rejects: str | None = None
    """Where the skipped rows were written."""


class TemplateRef(BaseModel):
    """The prompt template of a run."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: str | None
    """Bundled name or path (None for a judge that reads no prompt)."""
    sha256: str | None
    """Hash of the template file."""


class Manifest(BaseModel):
    """manifest.json: everything needed to say what produced a run and to repeat it. Never holds a secret."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    record_version: int = 1
    """Layout version of the run directory (:data:`RECORD_VERSION` when written; absent in directories written
    before it was recorded: 1)."""
    misalign_version: str
    """Package version that wrote the run."""
    created: str
    """When the run was written (UTC, ISO 8601)."""
    python: str | None = None
    """Python version."""
    platform: str | None = None
    """Operating system and machine."""
    packages: dict[str, str | None] = Field(default_factory=dict)
    """Versions of the packages that decide results."""
    model: str
    """The judge's model string."""
    dataset: DatasetRef
    """The data judged."""
    seeds: list[int]
    """Seed of each run."""
    template: TemplateRef
    """The judge template."""
    scorer: str | None = None
    """The embedded judge's trained head (digest) and encoder backend, e.g. ``embedded:3f2a.../onnx-int8``; None
    for a chat-model judge."""
    config: dict[str, Any]
    """Settings that decide the results (:class:`misalign.bench.runner.EvalConfig`)."""
    endpoint: dict[str, Any] = Field(default_factory=dict)
    """How the model was reached (URLs redacted); never changes an answer."""
    command: list[str] = Field(default_factory=list)
    """The command line."""
    served: dict[str, int] = Field(default_factory=dict)
    """What the endpoint actually returned: ``answers``, ``with_logprobs``, ``with_confidence`` (empty for judges
    that call no endpoint)."""


def _validated(path: Path, model: type[BaseModel]) -> Any:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "(top level)"
        raise ValueError(f"{path}: field {where!r}: {err['msg']}; not a {path.name} of misalign eval "
                         f"(record version {RECORD_VERSION})") from None


def load_run(path: Path) -> tuple[Manifest, Metrics]:
    """Read and validate a run directory's manifest.json and metrics.json; ValueError naming the file and field."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a run directory (it does not exist or is not a folder)")
    missing = [n for n in ("metrics.json", "manifest.json") if not (path / n).is_file()]
    if missing:
        raise ValueError(f"{path}: not a run directory written by `misalign eval` (missing {', '.join(missing)})")
    manifest = _validated(path / "manifest.json", Manifest)
    if manifest.record_version > RECORD_VERSION:
        raise ValueError(f"{path / 'manifest.json'}: record version {manifest.record_version} was written by a newer "
                         f"misalign ({manifest.misalign_version}); this one reads up to {RECORD_VERSION}: upgrade")
    return manifest, _validated(path / "metrics.json", Metrics)
