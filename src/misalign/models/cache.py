"""The call cache: one SQLite file (WAL mode) per run directory mapping a request's hash to its completion.

Each answer is committed as it arrives, so a run killed at any moment (``kill -9`` included) keeps every
finished call; several processes may write to the same file at once (SQLite serialises the writers).
Only successful completions are stored: a failed call is tried again on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from misalign.models.base import CacheWriteError, Completion, GenerationParams

SCHEMA_VERSION = 1


class CallCache:
    """``key(model, messages, params, run)`` → ``get``/``put`` a :class:`Completion`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against process death; fast
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL NOT NULL)")

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], params: GenerationParams, run: int = 0) -> str:
        """SHA-256 of the canonical JSON of everything that decides the answer."""
        blob = json.dumps({"v": SCHEMA_VERSION, "model": model, "messages": messages, "params": params.to_dict(),
                           "run": run}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Completion.from_dict(json.loads(row[0]), cached=True)

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        """The cached completions among ``keys`` (one query per 500 keys)."""
        return {k: Completion.from_dict(json.loads(v), cached=True)
                for k, v in self._select("SELECT key, value FROM calls", keys)}

    def _select(self, query: str, keys: list[str]) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = []
        for k in range(0, len(keys), 500):
            chunk = keys[k:k + 500]
            with self._lock:
                rows += self._db.execute(f"{query} WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    def put(self, key: str, completion: Completion) -> None:
        self.put_many([(key, completion)])

    def put_many(self, entries: list[tuple[str, Completion]]) -> None:
        """Store completions in one transaction (committed before this returns)."""
        self._write("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)",
                    [(k, json.dumps(c.to_dict(), ensure_ascii=False, separators=(",", ":"))) for k, c in entries])

    def _write(self, statement: str, rows: list[tuple[str, Any]]) -> None:
        """One transaction; a failed write (full or read-only disk) is a :class:`CacheWriteError` naming the file."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(statement, rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise CacheWriteError(f"{self.path}: {exc}") from exc

    @staticmethod
    def score_key(scorer: str, *texts: str) -> str:
        """SHA-256 of a deterministic scorer's identity and its input texts."""
        blob = json.dumps({"v": SCHEMA_VERSION, "scorer": scorer, "texts": texts}, ensure_ascii=False,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get_scores(self, keys: list[str]) -> dict[str, float]:
        """The stored scores among ``keys`` (for deterministic scorers such as the embedded judge)."""
        return dict(self._select("SELECT key, score FROM scores", keys))

    def put_scores(self, entries: list[tuple[str, float]]) -> None:
        """Store scores in one transaction (committed before this returns)."""
        self._write("INSERT OR REPLACE INTO scores (key, score) VALUES (?, ?)", entries)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CallCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
