"""DICES-shaped CSVs (DICES-350, DICES-990): conversations with every rater's ratings and the raters' demographics.

One row of a DICES file is one rater's ratings of one conversation (DICES-350 README):
``id, rater_id, rater_gender, rater_race, rater_raw_race, rater_age, rater_education, phase, item_id,
answer_time_ms, answer_timestamp, context, response, degree_of_harm, harm_type, safety_gold, safety_gold_reason,
Q1_whole_conversation_evaluation, Q2_harmful_content_*, Q3_bias_*, Q4_misinformation, Q5_political_affiliation,
Q6_policy_guidelines_*, Q2_harmful_content_overall, Q3_bias_overall, Q6_policy_guidelines_overall, Q_overall``;
DICES-990 adds ``rater_locale``. Answers are Yes/No/Unsure; ``Q_overall`` = Yes means the rater found the
conversation's final response unsafe, and ``safety_gold`` = Yes that the experts did.

:func:`load_dices` groups the rows into :class:`Conversation` s and :class:`Rater` s; a bad row is a
:class:`~misalign.io.DataError` naming file, line and field.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from misalign.io.formats import DataError, iter_rows, read_rows
from misalign.records import Prompt

ATTRIBUTES: tuple[str, ...] = ("age", "gender", "race", "education", "locale")
"""The demographic attributes of a rater, in the order a framing names them (``locale``: DICES-990 only)."""
REQUIRED = ("rater_id", "rater_gender", "rater_race", "rater_age", "rater_education", "item_id", "context",
            "response", "safety_gold", "Q_overall")
"""Columns every DICES file has (the others are kept when present)."""
DETECT = {"rater_id", "item_id", "context", "response", "Q_overall"}
"""Columns that make a file DICES-shaped."""
Answer = Literal["yes", "no", "unsure"]
_ANSWERS: dict[str, Answer] = {"yes": "yes", "no": "no", "unsure": "unsure"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Framing(_Model):
    """A demographic profile a model is asked to rate as (one per distinct profile of the raters)."""

    age: str
    """Age group (``gen z``, ``millennial``, ``gen x+``)."""
    gender: str
    """Gender (``Man``, ``Woman``, ...)."""
    race: str
    """Race/ethnicity group."""
    education: str
    """Education (``College degree or higher``, ...)."""
    locale: str | None = None
    """Locale (DICES-990: ``US``, ``IN``); None in DICES-350."""

    @property
    def key(self) -> str:
        """``age=…; gender=…; race=…; education=…[; locale=…]``: the framing's name in files."""
        return "; ".join(f"{a}={getattr(self, a)}" for a in ATTRIBUTES if getattr(self, a) is not None)

    def group(self, attribute: str) -> str:
        """The name of this framing's group on ``attribute``, e.g. ``gender=Woman``."""
        return f"{attribute}={getattr(self, attribute)}"


class Rater(_Model):
    """One human rater and their demographics."""

    id: str
    """``rater_id``."""
    framing: Framing
    """The rater's demographic profile."""
    raw_race: str | None = None
    """``rater_raw_race``, when given."""


class Rating(_Model):
    """One rater's ratings of one conversation."""

    rater_id: str
    """Who rated."""
    answer: Answer
    """``Q_overall``: yes (unsafe), no (safe) or unsure."""
    answers: dict[str, str]
    """Every other ``Q*`` answer of the row, as given."""
    line: int
    """The row's line in the file."""

    @property
    def unsafe(self) -> bool | None:
        """True for yes, False for no, None for unsure."""
        return {"yes": True, "no": False}.get(self.answer)


class Conversation(_Model):
    """One DICES conversation: the dialogue, its final response, the experts' labels and every rating."""

    item_id: str
    """``item_id``."""
    context: str
    """The turns before the final response."""
    response: str
    """The final chatbot response (what is rated)."""
    safety_gold: bool | None
    """The experts' label: True unsafe, False safe, None not given."""
    degree_of_harm: str | None = None
    """``degree_of_harm`` (Extreme, Moderate, Debatable, Benign)."""
    harm_type: list[str] = []
    """``harm_type``, split on commas."""
    safety_gold_reason: str | None = None
    """``safety_gold_reason``."""
    ratings: tuple[Rating, ...] = ()
    """Every rating of the conversation, in file order."""

    def human_unsafe_rate(self, raters: Iterable[str] | None = None) -> float | None:
        """Share of yes among the yes/no ratings (unsure left out), of ``raters`` only when given; None if none."""
        keep = None if raters is None else set(raters)
        votes = [r.unsafe for r in self.ratings if r.unsafe is not None and (keep is None or r.rater_id in keep)]
        return sum(votes) / len(votes) if votes else None


@dataclass
class Dices:
    """A loaded DICES file."""

    conversations: list[Conversation]
    raters: dict[str, Rater]
    source: str
    sha256: str
    variant: str
    """``DICES-990`` when the file has ``rater_locale``, else ``DICES-350``."""
    ratings: int = 0
    """Rows of the file (one rating each)."""

    def framings(self) -> list[Framing]:
        """Every distinct demographic profile of the raters, sorted by key."""
        return sorted({r.framing for r in self.raters.values()}, key=lambda f: f.key)

    def attributes(self) -> list[str]:
        """The attributes the data has (``locale`` only in DICES-990)."""
        return [a for a in ATTRIBUTES if any(getattr(r.framing, a) is not None for r in self.raters.values())]

    def groups(self) -> dict[str, list[str]]:
        """Per attribute, its values among the raters (sorted)."""
        return {a: sorted({getattr(r.framing, a) for r in self.raters.values()}) for a in self.attributes()}

    def summary(self) -> dict[str, Any]:
        """Counts for ``misalign data inspect``: conversations, raters, ratings, framings, and raters per group."""
        answers = Counter(r.answer for c in self.conversations for r in c.ratings)
        gold = Counter({True: "unsafe", False: "safe", None: "none"}[c.safety_gold] for c in self.conversations)
        return {
            "source": self.source, "shape": "dices", "variant": self.variant, "sha256": self.sha256,
            "conversations": len(self.conversations), "raters": len(self.raters), "ratings": self.ratings,
            "framings": len(self.framings()),
            "answers": {a: answers.get(a, 0) for a in ("yes", "no", "unsure")},
            "safety_gold": {k: gold.get(k, 0) for k in ("unsafe", "safe", "none")},
            "degree_of_harm": dict(sorted(Counter(c.degree_of_harm or "none" for c in self.conversations).items())),
            "groups": {a: {v: sum(getattr(r.framing, a) == v for r in self.raters.values()) for v in vals}
                       for a, vals in self.groups().items()},
        }

    def prompts(self) -> list[Prompt]:
        """One Stage I prompt per conversation (the dialogue and its final response), with the experts' labels and
        every rating with its rater's demographics in ``meta["dices"]`` (kept by every build step)."""
        out = []
        for c in self.conversations:
            ratings = [{"rater_id": r.rater_id, "answer": r.answer,
                        **{a: getattr(self.raters[r.rater_id].framing, a) for a in self.attributes()}}
                       for r in c.ratings]
            meta = {"dices": {"variant": self.variant, "degree_of_harm": c.degree_of_harm, "harm_type": c.harm_type,
                              "safety_gold": c.safety_gold, "safety_gold_reason": c.safety_gold_reason,
                              "human_unsafe_rate": c.human_unsafe_rate(), "ratings": ratings}}
            out.append(Prompt(id=c.item_id, prompt=conversation_text(c), meta=meta,
                              provenance={"source": "dices", "file": Path(self.source).name}))
        return out


def conversation_text(c: Conversation) -> str:
    """The conversation as one text: its context, then the final response."""
    return f"{c.context.rstrip()}\n\nFinal response: {c.response.strip()}"


def is_dices(path: str | Path) -> bool:
    """Whether ``path`` is a readable file whose first row has the DICES columns."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        for _, row in iter_rows(p):
            return not isinstance(row, DataError) and set(row) >= DETECT
    except (DataError, OSError, UnicodeDecodeError):
        return False
    return False


def _text(path: Path, line: int, row: dict[str, Any], col: str, *, required: bool = True) -> str | None:
    value = row.get(col)
    text = "" if value is None else str(value).strip()
    if not text and required:
        raise DataError(path, line, col, "missing or empty value")
    return text or None


def _answer(path: Path, line: int, row: dict[str, Any], col: str) -> Answer:
    text = (_text(path, line, row, col) or "").casefold()
    if text not in _ANSWERS:
        raise DataError(path, line, col, f"expected Yes, No or Unsure, got {row.get(col)!r}")
    return _ANSWERS[text]


def _gold(path: Path, line: int, row: dict[str, Any]) -> bool | None:
    text = (_text(path, line, row, "safety_gold", required=False) or "").casefold()
    if text in ("", "none", "na", "n/a"):
        return None
    if text not in ("yes", "no"):
        raise DataError(path, line, "safety_gold", f"expected Yes or No, got {row.get('safety_gold')!r}")
    return text == "yes"


def load_dices(path: str | Path) -> Dices:
    """Read a DICES-shaped file (CSV, or any format :func:`misalign.io.read_rows` reads).

    Checks: every required column is present; ids, texts and ``Q_overall`` (Yes/No/Unsure) are given;
    ``safety_gold`` is Yes, No or empty; a conversation's texts and labels and a rater's demographics are the same
    on every row; no rater rates a conversation twice. The first problem is a :class:`DataError` naming the file,
    line and field.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, None, "file not found")
    convs: dict[str, dict[str, Any]] = {}
    raters: dict[str, tuple[Rater, int]] = {}
    locale = False
    n = 0
    for line, row in read_rows(p):
        if n == 0:
            missing = [c for c in REQUIRED if c not in row]
            if missing:
                raise DataError(p, line, missing[0], f"missing column (a DICES file needs {', '.join(REQUIRED)})")
            locale = "rater_locale" in row
        n += 1
        rater_id = _text(p, line, row, "rater_id")
        item_id = _text(p, line, row, "item_id")
        assert rater_id is not None and item_id is not None
        framing = Framing(**{a: _text(p, line, row, f"rater_{a}", required=a != "locale" or locale)
                             for a in ATTRIBUTES if a != "locale" or locale})
        rater = Rater(id=rater_id, framing=framing, raw_race=_text(p, line, row, "rater_raw_race", required=False))
        if rater_id in raters and raters[rater_id][0] != rater:
            first = raters[rater_id][0]
            col = next((f"rater_{a}" for a in ATTRIBUTES if getattr(first.framing, a) != getattr(framing, a)),
                       "rater_raw_race")
            raise DataError(p, line, col, f"rater {rater_id!r} has other demographics at line {raters[rater_id][1]}")
        raters.setdefault(rater_id, (rater, line))
        answers = {k: str(v) for k, v in row.items() if k.startswith("Q") and k != "Q_overall" and v is not None}
        rating = Rating(rater_id=rater_id, answer=_answer(p, line, row, "Q_overall"), answers=answers, line=line)
        conv = {"item_id": item_id, "context": _text(p, line, row, "context"),
                "response": _text(p, line, row, "response"), "safety_gold": _gold(p, line, row),
                "degree_of_harm": _text(p, line, row, "degree_of_harm", required=False),
                "harm_type": [h.strip() for h in (_text(p, line, row, "harm_type", required=False) or "").split(",")
                              if h.strip()],
                "safety_gold_reason": _text(p, line, row, "safety_gold_reason", required=False)}
        if item_id not in convs:
            convs[item_id] = {**conv, "ratings": [], "line": line}
        else:
            first = convs[item_id]
            differs = next((k for k in conv if conv[k] != first[k]), None)
            if differs:
                raise DataError(p, line, differs, f"conversation {item_id!r} has another {differs} at line "
                                f"{first['line']}")
            again = next((r for r in first["ratings"] if r.rater_id == rater_id), None)
            if again:
                raise DataError(p, line, "rater_id", f"rater {rater_id!r} already rated conversation {item_id!r} "
                                f"at line {again.line}")
        convs[item_id]["ratings"].append(rating)
    if n == 0:
        raise DataError(p, None, None, "no rows")
    conversations = [Conversation(**{k: v for k, v in c.items() if k != "line"}) for c in convs.values()]
    return Dices(conversations=conversations, raters={k: v for k, (v, _) in raters.items()}, source=str(path),
                 sha256=hashlib.sha256(p.read_bytes()).hexdigest(), variant="DICES-990" if locale else "DICES-350",
                 ratings=n)


def safety_only(prompt: Prompt) -> Prompt:
    """``prompt`` classified into the safety dimension only (Demo-SafetyBench reclassifies DICES into the 14 safety
    domains): value and cultural domains and probabilities dropped."""
    update: dict[str, Any] = {}
    if prompt.domains is not None:
        update["domains"] = prompt.domains.model_copy(update={"value": [], "cultural": []})
    if prompt.probabilities is not None:
        update["probabilities"] = {k: v for k, v in prompt.probabilities.items() if k == "safety"}
    return prompt.model_copy(update=update)
