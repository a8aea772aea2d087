"""The answer cache: every model answer symoe paid for, stored the moment it arrives.

A run over thousands of questions takes hours; a crash, a Ctrl-C or a dead server must
not cost the answers already received. Each successful call is written to SQLite keyed by
everything that determines it: the model's identity (weights and server options, or a
hosted endpoint and model name), the sha256 of the rendered prompt, the sampling settings,
the request seed and the sample index. A re-run finds those answers and does not send
them again; a group whose answers are all cached does not even start its server.

Why SQLite: atomic commits, one file, safe with several readers and writers, in the
standard library. WAL with ``synchronous=NORMAL``: a commit survives the process being
killed (it is in the WAL before ``put`` returns); only a power loss may roll back the last
few commits, never corrupt the file.

Failed calls are not cached: a re-run asks again. ``attempts`` counts how often each key
was sent, which is how the soak script measures calls repeated because of faults.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheError
from .records import Completion

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CallIdentity:
    """What determines one answer (the cache key's parts)."""

    model_identity: str
    prompt_sha256: str
    sampling: tuple[tuple[str, object], ...]
    seed: int
    sample: int

    @property
    def key(self) -> str:
        body = json.dumps(
            [self.model_identity, self.prompt_sha256, list(self.sampling), self.seed, self.sample],
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(body.encode()).hexdigest()


class AnswerCache:
    """``get`` and ``put`` completions by key; ``note_attempt`` before each send."""

    def __init__(self, path: str | Path, read: bool = True):
        """``read=False``: answers are stored but never reused (``--fresh``)."""
        self.path = Path(path)
        self.read = read
        self.hits = 0
        self.stored = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                self._create()
            elif version != SCHEMA_VERSION or "answers" not in tables:
                raise CacheError(
                    f"{self.path}: not a symoe answer cache of this version (schema {version}); "
                    "pass --cache with another path, or --no-cache"
                )
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"{self.path}: cannot open the answer cache ({exc}); pass --cache with another path, or --no-cache") from None

    def _create(self) -> None:
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS answers (
                key TEXT PRIMARY KEY,
                model TEXT NOT NULL,
                role TEXT NOT NULL,
                question_id TEXT NOT NULL,
                sample INTEGER NOT NULL,
                completion TEXT NOT NULL,
                stored_at REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS attempts (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
            PRAGMA user_version = {SCHEMA_VERSION};
            """
        )

    def get(self, key: str) -> Completion | None:
        if not self.read:
            return None
        row = self._db.execute("SELECT completion FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return Completion.model_validate_json(row[0]).model_copy(update={"cached": True})

    def put(self, key: str, completion: Completion, role: str, question_id: str, sample: int) -> None:
        if completion.error is not None:
            return  # only answers are worth keeping; a failure is asked again
        body = completion.model_dump_json(exclude={"cached", "retryable"})
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, completion.model, role, question_id, sample, body, time.time()),
        )
        self.stored += 1

    def note_attempt(self, key: str) -> None:
        self._db.execute("INSERT INTO attempts VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", (key,))

    def attempt_counts(self) -> dict[str, int]:
        """How often each key was sent: the soak's and the crash test's measure of repeats."""
        return dict(self._db.execute("SELECT key, n FROM attempts"))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
