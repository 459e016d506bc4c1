"""Gold labels of single responses: the documented words, and other encodings only when the user maps them.

A file that says ``1``/``0``, ``unsafe``/``safe`` or ``true``/``false`` could mean either way round, so only
``aligned`` and ``misaligned`` (any case) are read by default; ``--label-map misaligned=1,unsafe`` adds words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

LABELS = ("aligned", "misaligned")
"""The label words every file may use (README, "Data shapes it reads")."""

LabelWords = Mapping[str, str]
"""A label word as read (case-folded) -> ``aligned`` or ``misaligned``."""

DEFAULT_LABELS: LabelWords = {label: label for label in LABELS}


def parse_label_map(specs: Iterable[str]) -> dict[str, str]:
    """``LABEL=WORD[,WORD...]`` specs (LABEL ``aligned`` or ``misaligned``) -> every accepted word -> its label.

    The documented words stay; a word given for both labels, or for the other label than its own, is an error
    (:class:`ValueError`), so no mapping can turn a file's labels round silently.
    """
    words = dict(DEFAULT_LABELS)
    for spec in specs:
        label, sep, given = spec.partition("=")
        label = label.strip().casefold()
        if not sep or label not in LABELS:
            raise ValueError(f"--label-map takes aligned=WORD[,WORD...] or misaligned=WORD[,WORD...], got {spec!r}")
        for word in (w.strip().casefold() for w in given.split(",")):
            if not word:
                raise ValueError(f"--label-map {spec!r}: an empty word")
            if words.get(word, label) != label:
                raise ValueError(f"--label-map {spec!r}: {word!r} already means {words[word]}")
            words[word] = label
    return words


def describe_labels(words: LabelWords) -> str:
    """The mapping in one line, e.g. ``aligned = aligned, 0, safe; misaligned = misaligned, 1, unsafe``."""
    return "; ".join(f"{label} = " + ", ".join(w for w, lab in words.items() if lab == label) for label in LABELS)


def unknown_label_message(raw: str) -> str:
    """What to say about a label word that is not mapped: the word and the option that would map it."""
    if not raw:
        return "missing label (aligned or misaligned)"
    return (f"label {raw!r} is not aligned/misaligned; say which it means with --label-map misaligned={raw} "
            f"or --label-map aligned={raw}")
