"""Bulk loading of our paired schema from JSONL and Parquet, checked column by column on an Arrow table.

The per-row path in :mod:`misalign.io.dataset` converts and validates one dict at a time (pydantic, ~60 µs a
row). Here a whole file is read into an Arrow table (``pyarrow.json``; ``pyarrow.parquet`` with text columns as
dictionaries) and every check runs at load time on its columns: types and empty text with Arrow compute; splits,
semantic types, ``meta``/``provenance`` JSON and domains once per distinct value; duplicate ids by counting codes.
What passes is kept as :class:`Checked` columns; :class:`Rows` builds a file's records from them only when a step
asks (copying values: nothing can fail then). A row the columns cannot vouch for (a failed check, a JSONL null
that may stand for an absent key, a value whose Python form may differ from ``json.loads``'s, a duplicate id) is
*flagged* or *involved*: the loader gives it to the per-row path, which returns the record or raises the error it
always did, so records, errors and rejects are the same. A file the table cannot represent line for line (pyarrow
cannot read it, blank lines, a field two columns could fill, per-dimension domain columns, unusual types) gets no
plan, and is read by the per-row path alone.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from misalign.io import dataset as ds
from misalign.io.formats import DataError, _jsonl_row, _open_binary, detect_format
from misalign.records import Domains, Item
from misalign.taxonomy import DIMENSIONS

_TEXTS = ("prompt", "aligned_response", "misaligned_response")
_SEP_LABEL, _SEP_DIM = "\x1f", "\x1e"


@dataclass
class Table:
    """A file read whole: its rows as an Arrow table, and each row as the per-row reader gives it."""

    table: pa.Table
    raw: Callable[[int], dict[str, Any] | DataError]
    """The row on a 1-based line, exactly as :func:`misalign.io.formats.iter_rows` yields it."""
    exact_nulls: bool
    """True when a null is a null (Parquet); False when it may also be a key the row lacks (JSONL)."""


def read(path: Path, data: bytes | None = None, mapping: Mapping[str, str] | None = None) -> Table | None:
    """``path`` as a :class:`Table`, or None if it is not JSONL/Parquet or Arrow cannot read it line for line.

    ``data``: the file's bytes, if they were read already; ``mapping``: the load's ``--map``."""
    try:
        fmt = detect_format(path)
        if fmt == "jsonl":
            return _read_jsonl(path, data)
        if fmt == "parquet":
            return _read_parquet(path, mapping)
    except Exception:  # unreadable here: the per-row path reads it and says why
        return None
    return None


def _read_jsonl(path: Path, data: bytes | None) -> Table | None:
    import pyarrow.json as pj

    if data is None or data[:2] == b"\x1f\x8b":
        with _open_binary(path) as fh:
            data = fh.read()
    with ThreadPoolExecutor(1) as pool:
        counted = pool.submit(data.count, b"\n")  # beside the parse, which lets go of the GIL
        table = pj.read_json(pa.BufferReader(data))
        n, newlines = table.num_rows, counted.result()
    table.validate(full=True)  # pyarrow.json lets some bytes that are not UTF-8 through; this catches them
    if not n or not (newlines == n or (newlines == n - 1 and not data.endswith(b"\n"))):
        return None  # blank lines: the table's row numbers are not the file's lines
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None  # a bare CR ends a line for the text reader, not for pyarrow
    lines: list[bytes] = []

    def raw(line: int) -> dict[str, Any] | DataError:
        if not lines:
            lines.extend(data.split(b"\n"))
        text = lines[line - 1].decode("utf-8", "surrogateescape")
        if line == 1:
            text = text.removeprefix("\ufeff")
        return _jsonl_row(path, line, text.rstrip("\r\n"))

    return Table(table, raw, exact_nulls=False)


def _read_parquet(path: Path, mapping: Mapping[str, str] | None) -> Table | None:
    """Text columns are read as dictionaries (Parquet stores them so): checks then run once per distinct value,
    UTF-8 included. The id column, distinct in every row, is read as it is."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    ours = ds._rename(dict.fromkeys(schema.names), mapping)
    id_col = ds._find(ours, "id")
    theirs = {ours_name: name for ours_name, name in zip(ours, schema.names, strict=True)}
    texts = [f.name for f in schema if _is_text(f.type) and f.name != theirs.get(id_col)]
    table = pq.read_table(path, read_dictionary=texts)
    table.validate(full=True)  # pyarrow does not check that Parquet text is UTF-8
    if not table.num_rows or len(set(table.column_names)) != table.num_columns:
        return None
    return Table(table, lambda line: table.slice(line - 1, 1).to_pylist()[0], exact_nulls=True)


def plan_items(tbl: Table, src: ds._Source, mapping: Mapping[str, str] | None) -> Checked | None:
    """Every row of a file in our paired schema, checked column by column (rows the columns cannot vouch for
    are flagged); None for a file this plan does not cover."""
    table = tbl.table
    if mapping:
        inverse = {theirs: ours for ours, theirs in mapping.items()}
        names = [inverse.get(c, c) for c in table.column_names]
        if len(set(names)) != len(names):
            return None
        table = table.rename_columns(names)
    cols = dict.fromkeys(table.column_names)
    for name, aliases in ds._ALIASES.items():  # each row must find the column the per-row path finds
        if sum(c == name or ds._norm(c) in aliases for c in cols) > 1:
            return None
    if any(ds._find(cols, dim) for dim in DIMENSIONS):
        return None
    try:
        return _Plan(src, table, tbl.exact_nulls).check()
    except _NoPlan:
        return None


class _NoPlan(Exception):
    """A column this plan does not read exactly: the per-row path reads the file."""


@dataclass
class _Coded:
    """A column as one code per row into its distinct values (converted: a split, a semantic type, domains)."""

    codes: np.ndarray
    values: list[Any]

    def of(self, rows: np.ndarray | None) -> list[Any]:
        values = self.values
        return [values[c] for c in (self.codes if rows is None else self.codes[rows]).tolist()]


@dataclass
class _Objects:
    """A free-form object column (``meta``, ``provenance``): JSON text coded per distinct value (checked), or
    the objects pyarrow read (``arr``), or none (every row ``{}``)."""

    n: int
    text: _Coded | None = None
    arr: pa.ChunkedArray | pa.Array | None = None

    def of(self, rows: np.ndarray | None) -> list[dict[str, Any]]:
        if self.arr is not None:
            return [v or {} for v in _values(self.arr, rows)]
        if self.text is None:
            return [{} for _ in range(self.n if rows is None else len(rows))]
        texts = self.text.values
        parsed = [_parsed(v) for v in texts]  # checked at load time: each is an object or empty
        out = []
        for c in (self.text.codes if rows is None else self.text.codes[rows]).tolist():
            obj, flat = parsed[c]
            out.append(dict(obj) if flat else json.loads(texts[c]))  # a record's own copy, as json.loads makes
        return out


def _parsed(text: str | None) -> tuple[dict[str, Any], bool]:
    """A checked JSON object text as an object, and whether a shallow copy of it is a copy (no nested values)."""
    obj = json.loads(text) if text and text != "{}" else {}
    return obj, not any(isinstance(v, dict | list) for v in obj.values())


def _values(arr: pa.ChunkedArray | pa.Array, rows: np.ndarray | None) -> list[Any]:
    """The Python values of ``rows`` (all if None); a dictionary column's from its distinct values."""
    if rows is not None:
        arr = arr.take(rows)
    if not pa.types.is_dictionary(arr.type):
        return arr.to_pylist()
    out: list[Any] = []
    for chunk in arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]:
        values = [*chunk.dictionary.to_pylist(), None]
        out.extend([values[i] for i in pc.fill_null(chunk.indices, len(values) - 1).to_numpy().tolist()])
    return out


@dataclass
class Checked:
    """A file's rows after every column check: what records are built from, and the rows (``flag``) that the
    per-row path must convert instead. Nothing here can fail later: building a record only copies values."""

    n: int
    flag: np.ndarray
    ids: pa.Array
    """Each row's id as the per-row path makes it (a row flagged for a null id has a stand-in)."""
    null_ids: bool
    """Whether some id is null: the per-row path may make ``None`` or ``<stem>-<line>`` of it."""
    stem: str
    texts: dict[str, pa.ChunkedArray]
    split: _Coded
    kind: _Coded
    domains: _Coded
    prov: _Objects
    meta: _Objects
    extra: list[tuple[str, pa.ChunkedArray | pa.Array]]
    """Columns of no field of ours, kept in ``meta`` by name."""
    split_set: bool
    """Whether the file has a split column (``split`` is then a field set, as the per-row path sets it)."""

    def involved(self, known: pa.Array | None, split: str | None) -> np.ndarray:
        """Rows (0-based, in order) whose outcome depends on more than their own columns: flagged ones, ids seen
        more than once here or in ``known`` (ids of earlier files), ids a null id might turn into, and rows in
        another split than ``split`` (a hub file's name)."""
        mask = self.flag.copy()
        codes = pc.dictionary_encode(self.ids).indices.to_numpy()
        mask |= np.bincount(codes)[codes] > 1
        if known is not None and len(known):
            mask |= pc.is_in(self.ids, value_set=known).to_numpy(zero_copy_only=False)
        if self.null_ids:
            maybe = pc.or_(pc.equal(self.ids, "None"), pc.starts_with(self.ids, f"{self.stem}-"))
            mask |= maybe.to_numpy(zero_copy_only=False)
        if split:
            other = np.array([v is not None and v != split for v in self.split.values])
            mask |= other[self.split.codes]
        return np.flatnonzero(mask)

    def id_of(self, row: int) -> str:
        return self.ids[row].as_py()

    def split_of(self, row: int) -> str | None:
        return self.split.values[self.split.codes[row]]

    def build(self, rows: np.ndarray | None, default_split: str | None) -> list[Item]:
        """The :class:`Item` of each of ``rows`` (all if None), from the checked columns."""
        texts = {name: _values(arr, rows) for name, arr in self.texts.items()}
        splits = self.split.of(rows)
        if default_split:
            splits = [s or default_split for s in splits]
        metas = self.meta.of(rows)
        for col, arr in self.extra:
            for meta, value in zip(metas, _values(arr, rows), strict=True):
                meta[col] = value
        dims = set(DIMENSIONS)
        fields_set = _ITEM_SET if self.split_set or default_split else _ITEM_SET_NO_SPLIT  # as model_copy sets it
        return [_construct(Item, fields_set, {
            "id": rid, "prompt": prompt, "meta": meta, "aligned_response": aligned, "misaligned_response": misaligned,
            "domains": _construct(Domains, dims, {"safety": list(dom[0]), "value": list(dom[1]),
                                                  "cultural": list(dom[2])}),
            "split": split, "provenance": prov, "semantic_type": kind})
            for rid, prompt, meta, aligned, misaligned, dom, split, prov, kind in zip(
                _values(self.ids, rows), texts["prompt"], metas, texts["aligned_response"],
                texts["misaligned_response"], self.domains.of(rows), splits, self.prov.of(rows), self.kind.of(rows),
                strict=True)]


_ITEM_SET = frozenset({"id", "domains", "meta", *_TEXTS, "provenance", "semantic_type", "split"})
_ITEM_SET_NO_SPLIT = _ITEM_SET - {"split"}


@dataclass
class Rows:
    """One file's records, built when asked for: its checked columns, the rows kept (0-based, in line order), the
    records the per-row path built for flagged rows that passed, and the split a hub file's name gives to rows
    without one."""

    checked: Checked
    rows: np.ndarray
    built: dict[int, Any]
    split: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def build(self, positions: np.ndarray | None = None) -> list[Any]:
        """The records at ``positions`` among the kept rows (all if None)."""
        rows = self.rows if positions is None else self.rows[positions]
        lazy = rows[~np.isin(rows, list(self.built))] if self.built else rows
        made = iter(self.checked.build(None if len(lazy) == self.checked.n else lazy, self.split))
        if not self.built:
            return list(made)
        return [self.built[r] if r in self.built else next(made) for r in rows.tolist()]

    def _splits(self) -> np.ndarray:
        """Each kept row's split (the hub file's for rows without one); rows built row by row have their own."""
        values = np.array([v or self.split for v in self.checked.split.values], dtype=object)
        out = values[self.checked.split.codes[self.rows]]
        if self.built:
            rows = list(self.built)
            out[np.searchsorted(self.rows, rows)] = [self.built[r].split for r in rows]
        return out

    def splits(self) -> set[str]:
        """The splits of the kept rows."""
        return {s for s in set(self._splits().tolist()) if s}

    def select(self, split: str) -> Rows:
        """The rows of one split."""
        keep = self._splits() == split
        rows = self.rows[keep]
        return Rows(self.checked, rows, {r: self.built[r] for r in rows.tolist() if r in self.built}, self.split)

    def tally(self) -> Counter[Any]:
        """How many kept rows share each profile (:func:`misalign.io.dataset.profile`), counted on the codes."""
        c = self.checked
        rows = self.rows[~np.isin(self.rows, list(self.built))] if self.built else self.rows
        n_kind, n_dom = len(c.kind.values), len(c.domains.values)
        keys = (c.split.codes[rows] * n_kind + c.kind.codes[rows]) * n_dom + c.domains.codes[rows]
        splits = [v or self.split for v in c.split.values]
        out: Counter[Any] = Counter()
        for key, count in zip(*(a.tolist() for a in np.unique(keys, return_counts=True)), strict=True):
            rest, dom = divmod(key, n_dom)
            s, kind = divmod(rest, n_kind)
            domains = tuple(tuple(names) for names in c.domains.values[dom])
            out[(splits[s], "paired", c.kind.values[kind], domains)] += count
        out.update(ds.profile(rec) for rec in self.built.values())  # always rows of this selection
        return out


@dataclass
class _Plan:
    src: ds._Source
    table: pa.Table
    exact_nulls: bool

    def __post_init__(self) -> None:
        self.n = self.table.num_rows
        self.cols = dict.fromkeys(self.table.column_names)
        self.flag = np.zeros(self.n, dtype=bool)
        self.used: set[str] = {"domains", "meta", "provenance"}
        self.memo: dict[tuple[str, tuple[str, ...]], list[str] | DataError] = {}

    def check(self) -> Checked:
        texts = {name: self._text(name) for name in _TEXTS}
        ids, null_ids = self._ids()
        split_col = ds._find(self.cols, "split")
        split = self._per_value(split_col, lambda v: ds._split(self.src.path, 0, split_col, v))
        kind_col = ds._find(self.cols, "semantic_type")
        kind = self._per_value(kind_col, lambda v: ds._semantic_type(self.src, 0, {kind_col: v}, set()))
        self.used.update(c for c in (split_col, kind_col) if c)
        domains = self._domains()
        prov, meta = self._object("provenance"), self._object("meta")
        extra = [(c, self._free(self.table.column(c))) for c in self.cols if c not in self.used]
        return Checked(self.n, self.flag, ids, null_ids, ds._stem(self.src.path), texts, split, kind, domains,
                       prov, meta, extra, split_col is not None)

    # -- columns ---------------------------------------------------------------------------------------

    def _mark(self, rows: Any) -> None:
        self.flag[np.asarray(rows, dtype=np.int64)] = True

    def _nulls(self, arr: pa.ChunkedArray) -> None:
        if arr.null_count:
            self._mark(pc.indices_nonzero(arr.is_null()).to_numpy())

    def _text(self, name: str) -> pa.ChunkedArray:
        """A text field's column; rows where it is null, empty or blank are flagged ("missing or empty text")."""
        col = ds._find(self.cols, name) or name
        self.used.add(col)
        if col not in self.cols:
            raise _NoPlan  # cannot happen for our schema's shape; the per-row path says what is missing
        arr = self.table.column(col)
        if not _is_text(arr.type):
            self.flag[:] = True  # "expected text, got ...", from the per-row path
            return arr
        self._mark(np.flatnonzero(_by_value(arr, _blank)))
        return arr

    def _ids(self) -> tuple[pa.Array, bool]:
        """Each row's id as the per-row path makes it (``str`` of the value, stripped, else ``<stem>-<line>``),
        and whether some are null (flagged: the per-row path makes ``None`` of a null it is given)."""
        col = ds._find(self.cols, "id")
        stem = ds._stem(self.src.path)
        if col is None:
            lines = pa.array(np.arange(1, self.n + 1)).cast(pa.string())
            return pc.binary_join_element_wise(f"{stem}-", lines, ""), False
        self.used.add(col)
        arr = self.table.column(col).combine_chunks()
        self._nulls(arr)
        if pa.types.is_integer(arr.type):  # as str() writes an integer that json.loads or Parquet gave
            return pc.fill_null(arr.cast(pa.string()), "None"), bool(arr.null_count)
        if pa.types.is_dictionary(arr.type) and _is_text(arr.type):
            arr = arr.cast(arr.type.value_type)
        if not _is_text(arr.type):
            self.flag[:] = True
            return pa.array([""] * self.n, pa.string()), False
        # an id that begins and ends with a visible ASCII character is its own stripped form; the rest as str.strip
        odd = pc.invert(pc.fill_null(pc.match_substring_regex(arr, r"^[!-~](?s:.*[!-~])?$"), False))
        if pc.any(odd).as_py():
            at = pc.indices_nonzero(odd)
            fixed = [(v.strip() if v else "") or f"{stem}-{i + 1}"
                     for i, v in zip(at.to_pylist(), arr.take(at).to_pylist(), strict=True)]
            arr = pc.replace_with_mask(arr, odd, pa.array(fixed, arr.type))
        return arr.cast(pa.string()), bool(self.table.column(col).null_count)  # one type, as ids are compared

    def _per_value(self, col: str | None, convert: Callable[[Any], Any]) -> _Coded:
        """``convert`` of each distinct value of a text column; rows whose value it rejects are flagged."""
        if col is None:
            return _Coded(np.zeros(self.n, dtype=np.int64), [None])
        arr = self.table.column(col)
        if pa.types.is_null(arr.type):
            return _Coded(np.zeros(self.n, dtype=np.int64), [None])
        if not _is_text(arr.type):
            self.flag[:] = True
            return _Coded(np.zeros(self.n, dtype=np.int64), [None])
        codes, values = _encode(arr)
        return self._resolve(codes, values, convert)

    def _resolve(self, codes: np.ndarray, keys: list[Any], convert: Callable[[Any], Any],
                 empty: Any = None) -> _Coded:
        """``convert`` of each distinct key; rows of a key it rejects are flagged (and get ``empty``)."""
        values, bad = [], []
        for j, key in enumerate(keys):
            try:
                values.append(convert(key))
            except DataError:
                values.append(empty)
                bad.append(j)
        if bad:
            self._mark(np.flatnonzero(np.isin(codes, bad)))
        return _Coded(codes, values)

    def _domains(self) -> _Coded:
        """Each row's domains, resolved once per distinct combination."""
        empty = ([], [], [])
        if "domains" not in self.cols:
            return _Coded(np.zeros(self.n, dtype=np.int64), [empty])
        arr = self.table.column("domains")
        kind = arr.type
        if pa.types.is_null(kind):
            return _Coded(np.zeros(self.n, dtype=np.int64), [empty])
        if _is_text(kind):
            codes, keys = _encode(arr)
            return self._resolve(codes, keys, self._domains_of_text, empty)
        if pa.types.is_struct(kind):
            codes, keys = _encode(self._domain_keys(arr.combine_chunks()))
            return self._resolve(codes, keys, self._domains_of_key, empty)
        raise _NoPlan

    def _domains_of_text(self, text: str | None) -> tuple[list[str], ...]:
        nested = ds._json_obj(self.src.path, 0, "domains", text) if text and text.strip() else {}
        if set(nested) <= set(DIMENSIONS) and all(_is_labels(v) for v in nested.values()):
            return tuple(self._labels(dim, tuple(nested.get(dim) or ())) for dim in DIMENSIONS)
        found = ds._domains(self.src.path, 0, {"domains": text}, self.src.taxonomy, set())  # says why, or copes
        return tuple(found.get(dim) for dim in DIMENSIONS)

    def _labels(self, dim: str, labels: tuple[str, ...]) -> list[str]:
        """:func:`misalign.io.dataset._resolve_labels` of a list of labels, once per distinct list."""
        key = (dim, labels)
        if key not in self.memo:
            try:
                self.memo[key] = ds._resolve_labels(self.src.path, 0, f"domains.{dim}", dim, list(labels),
                                                    self.src.taxonomy)
            except DataError as err:
                self.memo[key] = err
        found = self.memo[key]
        if isinstance(found, DataError):
            raise found
        return found

    def _domain_keys(self, arr: pa.StructArray) -> pa.Array:
        """One text per row naming its labels per dimension; rows that are null have no labels."""
        names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
        if names - set(DIMENSIONS):
            raise _NoPlan  # "unknown dimension(s)" applies to rows that hold the key, even as null
        parts = []
        for dim in DIMENSIONS:
            if dim not in names:
                parts.append(pa.nulls(len(arr), pa.string()))
                continue
            child = pc.struct_field(arr, dim)
            if pa.types.is_null(child.type):
                parts.append(pa.nulls(len(arr), pa.string()))
                continue
            if not pa.types.is_list(child.type) or not (_is_text(child.type.value_type)
                                                         or pa.types.is_null(child.type.value_type)):
                raise _NoPlan
            child = child.cast(pa.list_(pa.string()))
            flat = child.flatten()
            if flat.null_count or pc.any(pc.match_substring_regex(flat, f"[{_SEP_LABEL}{_SEP_DIM}]")).as_py():
                raise _NoPlan
            parts.append(pc.binary_join(child, _SEP_LABEL))
        keys = pc.binary_join_element_wise(*parts, _SEP_DIM, null_handling="replace", null_replacement="")
        return pc.if_else(arr.is_null(), _SEP_DIM * 2, keys) if arr.null_count else keys

    def _domains_of_key(self, key: str) -> tuple[list[str], ...]:
        return tuple(self._labels(dim, tuple(part.split(_SEP_LABEL)) if part else ())
                     for dim, part in zip(DIMENSIONS, key.split(_SEP_DIM), strict=True))

    def _object(self, name: str) -> _Objects:
        """A free-form object column (``meta``, ``provenance``): JSON text checked per distinct value."""
        if name not in self.cols:
            return _Objects(self.n)
        arr = self.table.column(name)
        if _is_text(arr.type):
            codes, texts = _encode(arr)

            def check(text: str | None) -> str | None:
                if text and text != "{}":  # "{}": what our writer puts in Parquet for an empty object
                    ds._json_obj(self.src.path, 0, name, text)
                return text

            return _Objects(self.n, text=self._resolve(codes, texts, check))
        if pa.types.is_struct(arr.type) or pa.types.is_null(arr.type):
            return _Objects(self.n, arr=self._free(arr, nulls_ok=True))
        self.flag[:] = True
        return _Objects(self.n)

    def _free(self, arr: pa.ChunkedArray, nulls_ok: bool = False) -> pa.ChunkedArray | pa.Array:
        """A column whose Python values go into records as they are, flagging JSONL rows where they may differ
        from ``json.loads``'s (a null that may be an absent key, a float that may have been an integer, a type
        JSON does not have)."""
        if not self.exact_nulls:
            if not nulls_ok:
                self._nulls(arr)
            arr = arr.combine_chunks()
            self._mark(np.flatnonzero(_unsure(arr)))
        return arr


def _is_labels(value: Any) -> bool:
    """A JSON list of label texts (or null): what a dimension of ``domains`` usually holds."""
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


_BLANK = (r"^[\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}"
          r"\x{3000}]*$")
"""Text that is empty or only whitespace: the class holds exactly the characters ``str.isspace`` is true of."""


def _blank(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per value: True where it is null, empty or only whitespace (``not v or v.isspace()``)."""
    return pc.fill_null(pc.match_substring_regex(arr, _BLANK), True).to_numpy(zero_copy_only=False)


def _by_value(arr: pa.ChunkedArray, fn: Callable[[pa.Array | pa.ChunkedArray], np.ndarray]) -> np.ndarray:
    """``fn`` (one bool per value) for every row; on a dictionary column it runs once per distinct value."""
    if not pa.types.is_dictionary(arr.type):
        return fn(arr)
    parts = []
    for chunk in arr.chunks:
        per_value = np.append(fn(chunk.dictionary), fn(pa.nulls(1, chunk.type.value_type)))
        parts.append(per_value[pc.fill_null(chunk.indices, len(chunk.dictionary)).to_numpy()])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _encode(arr: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[Any]]:
    """A column as a code per row and its distinct values (a null is one of them)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = (arr.unify_dictionaries() if pa.types.is_dictionary(arr.type) else arr).combine_chunks()
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode(null_encoding="encode")
    values = arr.dictionary.to_pylist()
    codes = arr.indices
    if codes.null_count:
        values.append(None)
        codes = pc.fill_null(codes, len(values) - 1)
    return codes.to_numpy(zero_copy_only=False).astype(np.int64), values


def _unsure(arr: pa.Array) -> np.ndarray:
    """Per row: True where the value read by pyarrow from JSON may not be what ``json.loads`` gives."""
    kind, n = arr.type, len(arr)
    if pa.types.is_null(kind) or _is_text(kind) or pa.types.is_boolean(kind) or kind == pa.int64():
        return np.zeros(n, dtype=bool)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind):  # 1 and 1.0 both read as 1.0
        return valid & pc.fill_null(pc.equal(pc.floor(arr), arr), False).to_numpy(zero_copy_only=False)
    if pa.types.is_struct(kind):
        out = np.zeros(n, dtype=bool)
        for i in range(kind.num_fields):
            child = arr.field(i)  # a key missing from the row reads as null, like a null it holds
            out |= child.is_null().to_numpy(zero_copy_only=False) | _unsure(child)
        return out & valid
    if pa.types.is_list(kind):
        inner = _unsure(arr.flatten())
        out = np.zeros(n, dtype=bool)
        if inner.any():
            out[pc.list_parent_indices(arr).to_numpy()[inner]] = True
        return out
    return valid  # timestamps (pyarrow reads ISO dates as them) and the like


def _is_text(kind: pa.DataType) -> bool:
    """A text column, or a dictionary of text (as Parquet text is read)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _construct(cls: type[Any], fields_set: set[str], values: dict[str, Any]) -> Any:
    """A model from values already checked (as :meth:`pydantic.BaseModel.model_construct` does, without its
    per-field defaults pass): ``values`` must hold every field, in declaration order."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    _SET_FIELDS(obj, set(fields_set))
    _SET_EXTRA(obj, None)
    _SET_PRIVATE(obj, None)
    return obj


_SET_FIELDS = BaseModel.__pydantic_fields_set__.__set__  # type: ignore[attr-defined]
_SET_EXTRA = BaseModel.__pydantic_extra__.__set__  # type: ignore[attr-defined]
_SET_PRIVATE = BaseModel.__pydantic_private__.__set__  # type: ignore[attr-defined]



def first_row(path: Path) -> dict[str, Any] | None:
    """The first row of a JSONL or Parquet file as the per-row reader gives it (without reading the rest), or
    None if the file is another format or its first line is not a row."""
    try:
        fmt = detect_format(path)
        if fmt == "jsonl":
            with _open_binary(path) as fh:
                line = fh.readline()
            if line.count(b"\r") != line.count(b"\r\n"):
                return None  # a bare CR ends a line for the text reader
            text = line.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
            row = _jsonl_row(path, 1, text.rstrip("\r\n")) if text.strip() else None
            return row if isinstance(row, dict) else None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=1):
                return batch.to_pylist()[0] if batch.num_rows else None
    except Exception:  # the per-row path reads it and says why
        return None
    return None
