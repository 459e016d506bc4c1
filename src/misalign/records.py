"""The data model: prompts, paired items, single labelled responses and judge verdicts.

Domains are stored per dimension as display names (``{"safety": [...], "value": [...], "cultural": [...]}``);
readers in :mod:`misalign.io` resolve ids and case variants to those names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from misalign.taxonomy import DIMENSIONS

HEADLINE_SCOPES: tuple[str, ...] = ("overall", *DIMENSIONS, "all_three")
"""The scopes every figure is reported in: all responses, items with a domain of each dimension, items with a
domain of all three (:meth:`Domains.scopes`)."""

Label = Literal["aligned", "misaligned"]
Split = Literal["train", "validation", "test"]
VerdictLabel = Literal["aligned", "misaligned", "unparseable"]
SemanticType = Literal["object", "attribute", "relation"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SEMANTIC_TYPES: tuple[str, ...] = ("object", "attribute", "relation")
"""MisAlign-Profile's semantic types: where the misalignment lies (see :data:`SEMANTIC_TYPE_HELP`)."""
SEMANTIC_TYPE_HELP = (
    "MisAlign-Profile semantic type: object (the misalignment lies in what is produced or done), attribute "
    "(in a property attributed to a person, group or thing) or relation (in how people, groups or acts "
    "relate: power, roles, obligations); None when not assigned."
)


class Domains(BaseModel):
    """Domains of each dimension that a prompt touches (empty list: none of that dimension)."""

    model_config = ConfigDict(extra="forbid")

    safety: list[str] = Field(default_factory=list, description="BeaverTails safety domains.")
    value: list[str] = Field(default_factory=list, description="Schwartz value domains.")
    cultural: list[str] = Field(default_factory=list, description="UNESCO cultural domains.")

    def get(self, dimension: str) -> list[str]:
        return getattr(self, dimension)

    def dimensions(self) -> list[str]:
        """The dimensions with at least one domain."""
        return [d for d in DIMENSIONS if getattr(self, d)]

    @property
    def all_three(self) -> bool:
        """True when the item carries a domain of every dimension (the joint case)."""
        return bool(self.safety and self.value and self.cultural)

    def scopes(self) -> list[str]:
        """The headline scopes (:data:`HEADLINE_SCOPES`) an item with these domains counts in."""
        dims = self.dimensions()
        return ["overall", *dims, *(["all_three"] if len(dims) == len(DIMENSIONS) else [])]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable identifier, unique within a dataset.")
    prompt: str = Field(min_length=1, description="The user prompt (may hold earlier turns as text).")
    meta: dict[str, Any] = Field(default_factory=dict, description="Fields we do not know, kept as they came.")


class Prompt(_Record):
    """A Stage I prompt; later steps add domains, probabilities, a SimHash, a duplicate mark and a semantic type."""

    domains: Domains | None = Field(default=None, description="Assigned domains (p >= delta).")
    probabilities: dict[str, dict[str, float]] | None = Field(
        default=None, description="Per dimension, the probability of every domain."
    )
    simhash: int | None = Field(default=None, ge=0, lt=2**64, description="64-bit SimHash fingerprint.")
    duplicate_of: str | None = Field(default=None, description="Id of the kept near-duplicate.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="Where the prompt came from.")
    semantic_type: SemanticType | None = Field(default=None, description=SEMANTIC_TYPE_HELP)


class Item(_Record):
    """A paired benchmark item: one prompt, an aligned and a misaligned response."""

    aligned_response: str = Field(min_length=1, description="The response a careful assistant would give.")
    misaligned_response: str = Field(min_length=1, description="A response that fails on the domains.")
    domains: Domains = Field(default_factory=Domains, description="Domains at stake, per dimension.")
    split: Split | None = Field(default=None, description="train, validation or test.")
    provenance: dict[str, Any] = Field(default_factory=dict, description="Source, generator, judge verdicts.")
    semantic_type: SemanticType | None = Field(default=None, description=SEMANTIC_TYPE_HELP)


class LabelledResponse(_Record):
    """A single response with a gold label, evaluated like one side of a paired item."""

    response: str = Field(min_length=1, description="The response under test.")
    label: Label = Field(description="Gold label.")
    domains: Domains = Field(default_factory=Domains, description="Domains at stake, per dimension.")
    split: Split | None = Field(default=None, description="train, validation or test.")


class Verdict(BaseModel):
    """A judge's parsed answer about one response."""

    verdict: VerdictLabel = Field(description="misaligned, aligned, or unparseable.")
    flags: dict[str, bool] | None = Field(default=None, description="Per-dimension misalignment flags.")
    confidence: float | None = Field(default=None, ge=0, le=1, description="Stated confidence in the verdict.")
    score: float | None = Field(default=None, description="P(misaligned) for threshold-free metrics.")
    reason: str | None = Field(default=None, description="One-sentence reason, if given.")
