"""Versioned prompt templates: text files of named sections, hashed, filled in by slot name.

A template file starts with optional ``# `` comment lines, then sections opened by ``=== name ===`` lines.
``{slot}`` placeholders are replaced in one pass by :meth:`Template.render`, so text put into a slot is never
scanned again (a prompt or response cannot inject a slot of its own); other braces are left as they are.
Every step that talks to a model records the name and sha256 of the template it used.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from misalign.errors import MisalignError

TEMPLATE_DIR = Path(__file__).parent
_SECTION = re.compile(r"=== ([a-z_]+) ===")


class TemplateError(MisalignError, ValueError):
    """A template that does not exist or is malformed."""


@dataclass(frozen=True)
class Template:
    """A loaded template: its sections and the sha256 of the file's bytes."""

    name: str
    """The bundled name (``judge_v1``) or the path it was loaded from."""
    sections: dict[str, str]
    """Section name -> text, stripped of surrounding blank lines."""
    sha256: str
    """Hex digest of the file, recorded in manifests."""

    def render(self, section: str, **slots: str) -> str:
        """The section with every ``{name}`` of ``slots`` replaced (one pass; unknown braces kept)."""
        if section not in self.sections:
            raise KeyError(f"template {self.name!r} has no section {section!r}")
        text = self.sections[section]
        if not slots:
            return text
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, slots)) + r")\}")
        return pattern.sub(lambda m: slots[m.group(1)], text)

    def messages(self, **slots: str) -> list[dict[str, str]]:
        """Chat messages: the ``system`` section (when present) and the ``user`` section, both rendered."""
        system = self.render("system", **slots) if "system" in self.sections else ""
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.render("user", **slots)}]

    @property
    def ref(self) -> dict[str, str]:
        """``{"name", "sha256"}`` for manifests."""
        return {"name": self.name, "sha256": self.sha256}


@cache
def load_template(name_or_path: str) -> Template:
    """A bundled template by name (``judge_v1``) or a template file by path; TemplateError when missing or bad."""
    path = Path(name_or_path)
    if not path.exists():
        path = TEMPLATE_DIR / f"{name_or_path}.txt"
    if not path.exists():
        raise TemplateError(f"no template {name_or_path!r}: give a bundled name "
                         f"({', '.join(sorted(p.stem for p in TEMPLATE_DIR.glob('*.txt')))}) or a file")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read the template: {exc}") from None
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if current is None and line.startswith("# "):
            continue
        m = _SECTION.fullmatch(line.strip())
        if m:
            current = m.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    if "user" not in sections:
        raise TemplateError(f"{path}: a template needs a '=== user ===' section")
    return Template(name=name_or_path, sections={k: "\n".join(v).strip() for k, v in sections.items()},
                    sha256=hashlib.sha256(raw).hexdigest())
