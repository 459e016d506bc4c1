"""The 112-domain taxonomy: safety (BeaverTails), value (Schwartz), cultural (UNESCO FCS).

A taxonomy is data: one TOML file per dimension, each holding ``[[domains]]`` tables with ``id``, ``name``
and ``definition``. :meth:`Taxonomy.default` loads the bundled files; :meth:`Taxonomy.load` loads a user's.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from misalign.errors import MisalignError

DIMENSIONS: tuple[str, ...] = ("safety", "value", "cultural")
"""The three dimensions, in report order."""
DIMENSION_TITLES: dict[str, str] = {"safety": "Safety", "value": "Value", "cultural": "Cultural"}
"""Display titles of the dimensions."""

NO_DOMAIN_LABELS = frozenset({"", "none", "unknown", "n/a", "na", "nan", "null", "-"})
"""Label values that mean "no domain of this dimension" ("Unknown" = the classifier was undecided)."""

DATA_DIR = Path(__file__).parent / "data"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class TaxonomyError(MisalignError, ValueError):
    """A taxonomy file is malformed; the message names the file and the domain."""


@dataclass(frozen=True)
class Domain:
    """One domain of one dimension."""

    dimension: str
    """One of :data:`DIMENSIONS`."""
    id: str
    """Stable snake_case identifier, unique across the taxonomy."""
    name: str
    """Display name, as the paper's data spells it."""
    definition: str
    """One or two sentences used by classifiers."""
    source: str
    """The source taxonomy (BeaverTails, Schwartz Value Survey, UNESCO FCS)."""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class Taxonomy:
    """An ordered, validated set of domains with case-insensitive lookup by name or id."""

    def __init__(self, domains: Sequence[Domain], version: str = "custom") -> None:
        self.domains: tuple[Domain, ...] = tuple(domains)
        self.version = version
        self._lookup: dict[tuple[str, str], Domain] = {}
        for d in self.domains:
            self._lookup[(d.dimension, d.name.casefold())] = d
            self._lookup[(d.dimension, d.id.casefold())] = d

    @classmethod
    def default(cls) -> Taxonomy:
        """The bundled taxonomy (cached)."""
        return _default()

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> Taxonomy:
        """Load and validate taxonomy files (one per dimension); a folder means its ``*.toml`` files."""
        files: list[Path] = []
        for p in map(Path, paths):
            files.extend(sorted(p.glob("*.toml")) if p.is_dir() else [p])
        if not files:
            raise TaxonomyError("no taxonomy files given")
        domains: list[Domain] = []
        seen_ids: dict[str, Path] = {}
        seen_dims: dict[str, Path] = {}
        digest = hashlib.sha256()
        for path in files:
            raw = path.read_bytes()
            digest.update(raw)
            file_domains = _parse_file(path, raw)
            dim = file_domains[0].dimension
            if dim in seen_dims:
                raise TaxonomyError(f"{path}: dimension {dim!r} already loaded from {seen_dims[dim]}")
            seen_dims[dim] = path
            for d in file_domains:
                if d.id in seen_ids:
                    raise TaxonomyError(f"{path}: duplicate domain id {d.id!r} (also in {seen_ids[d.id]})")
                seen_ids[d.id] = path
            domains.extend(file_domains)
        order = {dim: i for i, dim in enumerate(DIMENSIONS)}
        domains.sort(key=lambda d: order[d.dimension])  # stable: keeps file order within a dimension
        return cls(domains, version=digest.hexdigest()[:12])

    def __len__(self) -> int:
        return len(self.domains)

    def __iter__(self):
        return iter(self.domains)

    def dimension(self, dim: str) -> list[Domain]:
        """The domains of one dimension, in file order."""
        return [d for d in self.domains if d.dimension == dim]

    def names(self, dim: str) -> list[str]:
        return [d.name for d in self.domains if d.dimension == dim]

    def resolve(self, dim: str, label: str) -> Domain | None:
        """The domain whose name or id equals ``label`` (case-insensitive, trimmed), else None."""
        return self._lookup.get((dim, label.strip().casefold()))

    def counts(self) -> dict[str, int]:
        return {dim: len(self.dimension(dim)) for dim in DIMENSIONS}


def _parse_file(path: Path, raw: bytes) -> list[Domain]:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaxonomyError(f"{path}: not valid TOML: {exc}") from exc
    dim = doc.get("dimension")
    if dim not in DIMENSIONS:
        raise TaxonomyError(f"{path}: unknown dimension {dim!r}; expected one of {', '.join(DIMENSIONS)}")
    source = str(doc.get("source", "")).strip()
    entries = doc.get("domains")
    if not isinstance(entries, list) or not entries:
        raise TaxonomyError(f"{path}: no [[domains]] entries")
    out: list[Domain] = []
    names: set[str] = set()
    for i, entry in enumerate(entries, 1):
        where = f"{path}: domain #{i}"
        if not isinstance(entry, dict):
            raise TaxonomyError(f"{where}: expected a table")
        values = {}
        for field in ("id", "name", "definition"):
            value = entry.get(field)
            if not isinstance(value, str) or not value.strip():
                raise TaxonomyError(f"{where} ({entry.get('name', '?')}): empty or missing {field!r}")
            values[field] = value.strip()
        if not _ID_RE.match(values["id"]):
            raise TaxonomyError(f"{where}: id {values['id']!r} must be lower-case snake_case")
        if values["name"].casefold() in names:
            raise TaxonomyError(f"{where}: duplicate domain name {values['name']!r}")
        names.add(values["name"].casefold())
        out.append(Domain(dimension=dim, source=str(entry.get("source", source)), **values))
    return out


@cache
def _default() -> Taxonomy:
    return Taxonomy.load([DATA_DIR / f"{dim}.toml" for dim in DIMENSIONS])
