"""Row-level reading and writing of JSONL, JSON, CSV/TSV and Parquet files (optionally gzipped)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import secrets
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from misalign.errors import MisalignError

Format = Literal["jsonl", "json", "csv", "tsv", "parquet"]
_EXT: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet",
}


class DataError(MisalignError, ValueError):
    """Bad input: the message names the file, the line (or row) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str) -> None:
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        self.raw: Any = None  # the unparsed row text, when the row could not be parsed at all
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {f'field {field!r}: ' if field else ''}{message}")


def detect_format(path: str | Path) -> Format:
    """The format from the extension (``.gz`` looked through), else from the first bytes."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in _EXT:
        return _EXT[suffixes[-1]]
    with _open_binary(p) as fh:
        head = fh.read(4096)
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"["):
        return "json"
    return "tsv" if head.split(b"\n", 1)[0].count(b"\t") > head.split(b"\n", 1)[0].count(b",") else "csv"


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_binary(p: Path):
    return gzip.open(p, "rb") if _is_gzip(p) else open(p, "rb")


def _open_text(p: Path):
    """The file as text; a byte that is not valid UTF-8 becomes a lone surrogate (see :func:`_utf8_error`)."""
    return io.TextIOWrapper(_open_binary(p), encoding="utf-8-sig", errors="surrogateescape", newline="")


_BAD_BYTE = re.compile("[\udc80-\udcff]")
"""What ``errors="surrogateescape"`` makes of a byte that is not valid UTF-8 (valid UTF-8 never decodes to these)."""


def _utf8_error(p: Path, line: int, text: str) -> DataError | None:
    """The error for the first byte of one line's ``text`` that was not valid UTF-8, or None if there is none."""
    bad = _BAD_BYTE.search(text)
    if bad is None:
        return None
    err = DataError(p, line, None, _not_utf8(bad, bad.start() + 1))
    err.raw = _printable(text.rstrip("\r\n"))
    return err


def _not_utf8(bad: re.Match[str], column: int) -> str:
    """The message for the undecodable byte ``bad`` found at ``column`` (1-based, in characters)."""
    return f"not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at column {column})"


def _printable(value: Any) -> Any:
    """``value`` (text, or lists and dicts of it) with undecodable bytes written as ``\\xNN``, safe to write out."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    return value


def read_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, row)`` pairs; ``line`` is the 1-based line (JSONL, CSV) or row number (JSON, Parquet).

    A malformed row raises :class:`DataError` naming the file and line.
    """
    for line, row in iter_rows(path):
        if isinstance(row, DataError):
            raise row
        yield line, row


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Like :func:`read_rows`, but a malformed row that does not break framing is yielded as its error.

    An empty (0-byte) file has no rows. A gzip stream that ends early or is corrupt raises :class:`DataError`
    saying how many rows came before, so that a cut-off file is never taken for a whole one.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, None, "file not found")
    if p.stat().st_size == 0:
        return
    n = 0
    try:
        for item in _rows_of(p, detect_format(p)):
            yield item
            n += 1
    except EOFError:
        if not _is_gzip(p):
            raise
        raise DataError(p, None, None, f"gzip stream ends early after {n} rows") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(p, None, None, f"gzip stream is corrupt after {n} rows ({exc})") from None


def _rows_of(p: Path, fmt: Format) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """The rows of ``p`` read as ``fmt``."""
    if fmt == "parquet":
        return _parquet_rows(p)
    if fmt == "json":
        return _json_rows(p)
    if fmt == "jsonl":
        return _jsonl_rows(p)
    return _csv_rows(p, "\t" if fmt == "tsv" else ",")


def column_types(path: str | Path) -> dict[str, str]:
    """The declared type of each column (Parquet: the Arrow type, e.g. ``int64``); empty for untyped formats."""
    p = Path(path)
    try:
        if p.stat().st_size == 0 or detect_format(p) != "parquet":
            return {}
        import pyarrow.parquet as pq

        schema = pq.read_schema(p)
    except Exception:  # missing, cut off or broken: reading its rows says which
        return {}
    return {f.name: str(f.type) for f in schema}


def _parquet_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a Parquet file, numbered from 1."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(p, None, None, f"not a readable Parquet file: {exc}") from exc
    n = 0
    for batch in pf.iter_batches(batch_size=1024):  # small batches: a caller that wants the first row gets it fast
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _json_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``.json`` file holding one list of objects, numbered from 1."""
    with _open_text(p) as fh:
        text = fh.read()
    bad = _BAD_BYTE.search(text)
    if bad:  # one document: not valid UTF-8 anywhere means not readable at all
        before = text[: bad.start()]
        raise DataError(p, before.count("\n") + 1, None, _not_utf8(bad, len(before) - before.rfind("\n")))
    if not text.strip():
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(p, exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(doc, list):
        raise DataError(p, 1, None, "a .json file must hold a list of objects (use .jsonl for one per line)")
    for i, row in enumerate(doc, 1):
        if not isinstance(row, dict):
            raise DataError(p, i, None, f"row {i} is not an object")
        yield i, row


def _jsonl_rows(p: Path) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Rows of a JSONL file by line; a line that is not a JSON object is yielded as its error."""
    with _open_text(p) as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                yield i, _jsonl_row(p, i, line.rstrip("\r\n"))


def _jsonl_row(p: Path, i: int, text: str) -> dict[str, Any] | DataError:
    """One JSONL line (without its line ending) as an object, or the error saying why it is not one."""
    err = _utf8_error(p, i, text)
    if err:
        return err
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:  # the line is one line: the decoder's offset is its column
        err = DataError(p, i, None, f"invalid JSON: {exc.msg} (column {exc.pos + 1})")
        err.raw = text
        return err
    return row if isinstance(row, dict) else DataError(p, i, None, "expected a JSON object")


class _Lines:
    """A text file's lines as the csv reader takes them, keeping the first error of a line not valid UTF-8."""

    def __init__(self, p: Path, fh: Iterator[str]) -> None:
        self.p, self.fh, self.n = p, fh, 0
        self.bad: DataError | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self.fh)
        self.n += 1
        self.bad = self.bad or _utf8_error(self.p, self.n, line)
        return line

    def take_bad(self) -> DataError | None:
        """The error of the record just read, if one of its lines was not valid UTF-8; it is forgotten."""
        bad, self.bad = self.bad, None
        return bad


def _csv_rows(p: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Rows of a CSV/TSV file by the line each starts on; a row with too many values, or with text that is not
    valid UTF-8 (by the line of that text), is yielded as its error."""
    csv.field_size_limit(sys.maxsize)  # process-wide; long texts must load (the default is 131072 characters)
    with _open_text(p) as fh:
        lines = _Lines(p, fh)
        reader = csv.DictReader(lines, delimiter=delimiter)
        if reader.fieldnames is not None:  # the header is read: without its column names no row can be read
            header_bad = lines.take_bad()
            if header_bad:
                raise header_bad
        start = 2
        for row in reader:
            bad = lines.take_bad()
            if bad:
                bad.raw = _printable(row)
                yield bad.line or start, bad
            elif None in row:
                n_cols = len(reader.fieldnames or [])
                yield start, DataError(p, start, None, f"{len(row[None]) + n_cols} values for {n_cols} columns")
            else:
                yield start, row
            start = reader.line_num + 1


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]], types: Mapping[str, str] | None = None) -> int:
    """Write rows atomically (temp file, then rename) in the format of ``path``'s extension; return the count.

    ``types``: Parquet column types by name (Arrow aliases: ``string``, ``uint64``, ...), so that a column is
    typed the same in every file whatever its values (an all-empty one is not ``null``); others are inferred.
    The file gets the mode of any other new file (0666 less the umask: 0644 by default)."""
    p = Path(path)
    fmt = detect_format(p) if p.suffix else "jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(p)
    try:
        n = _write(tmp, fmt, rows, gz=p.suffix.lower() == ".gz", types=types or {})
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _new_file_beside(p: Path) -> Path:
    """A new empty temporary file in ``p``'s folder, made with mode 0666 less the umask like any other output
    (``tempfile.mkstemp`` would make it 0600)."""
    while True:
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _write(p: Path, fmt: Format, rows: Iterable[dict[str, Any]], gz: bool, types: Mapping[str, str]) -> int:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(rows)
        columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
        types = {"simhash": "uint64", **types}
        table = pa.table({k: pa.array(v, type=pa.type_for_alias(types[k]) if k in types else None)
                          for k, v in columns.items()})
        pq.write_table(table, p, compression="zstd")
        return table.num_rows
    opener = gzip.open if gz else open
    with opener(p, "wt", encoding="utf-8", newline="") as fh:
        n = 0
        if fmt in ("jsonl", "json"):
            if fmt == "json":
                fh.write("[\n")
            for n, row in enumerate(rows, 1):
                if fmt == "json" and n > 1:
                    fh.write(",\n")
                fh.write(json.dumps(row, ensure_ascii=False))
                if fmt == "jsonl":
                    fh.write("\n")
            if fmt == "json":
                fh.write("\n]\n")
            return n
        rows = list(rows)
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        return len(rows)


def _cell(value: Any) -> Any:
    """CSV cells: nested values as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value
