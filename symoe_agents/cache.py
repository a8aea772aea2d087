"""The answer cache: every model answer symoe paid for, stored the moment it arrives.

A run over thousands of questions takes hours; a crash, a Ctrl-C or a dead server must
not cost the answers already received. Each successful call is written to SQLite keyed by
everything that determines it: the model's identity (weights and server options, or a
hosted endpoint and model name), the sha256 of the rendered prompt, the sampling settings,
the request seed and the sample index. A re-run finds those answers and does not send
them again; a group whose answers are all cached does not even start its server.

Why SQLite: atomic commits, one file, safe with several readers and writers, in the
standard library. WAL with ``synchronous=NORMAL``: a commit survives the process being
killed; only a power loss may roll back the last few commits, never corrupt the file.

All of its SQLite work runs on the IO thread (``io_thread``), never on the event loop:
``put`` and ``note_attempt`` queue their rows and return at once; the thread writes what is
queued in one transaction (under load, many answers per commit), moments after ``put``: a
crash loses at most those moments' answers. A database another process keeps locked past
the busy timeout, or a full disk, leaves the rows queued and retried every few seconds,
never a failed call: the answer stays in memory (and is found by ``get``) until it is
written. A cache that stays unwritable for ``give_up_s`` stops the run with a
``CacheError`` (the group runner stops sending, lets what is in flight finish, and raises
it), since a run that goes on would keep paying for answers it cannot keep. What is still
queued at ``close`` is saved to a small JSONL file of its own beside the cache (or, if that
cannot be written either, in a private folder in the temporary folder), which the next
``AnswerCache`` on the same path claims and writes into the cache: an answer paid for is
not lost to a lock or a full disk, nor to another run sharing the cache.

Failed calls are not cached: a re-run asks again. ``attempts`` counts how often each key
was sent, which is how the soak script measures calls repeated because of faults.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import io_thread
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

    def __init__(
        self, path: str | Path, read: bool = True, busy_timeout_s: float = 5.0, retry_s: float = 2.0, give_up_s: float = 60.0
    ):
        """``read=False``: answers are stored but never reused (``--fresh``).
        ``busy_timeout_s``: how long a write waits for another process's lock before its
        rows are kept for a flush ``retry_s`` later (the IO thread waits meanwhile, so this is
        short). ``give_up_s``: how long writes (or a lookup) may keep failing before the
        run is stopped."""
        self.path = Path(path)
        self.read = read
        self.hits = 0
        self.stored = 0
        self.spilled: tuple[int, Path] | None = None  # (answers, file) saved at close instead
        self._failing_since: float | None = None
        self._give_up_s = give_up_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # used only from the IO thread after this (made here so that an error is the caller's)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False)
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
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):  # nothing is paid for yet: say who to wait for
                raise CacheError(f"{self.path}: another process kept the answer cache locked for {busy_timeout_s:g} s; "
                                 "wait for it to finish and run again, or pass --cache with another path") from None  # fmt: skip
            raise CacheError(f"{self.path}: cannot open the answer cache ({exc}); pass --cache with another path, or --no-cache") from None
        # rows for the IO thread: ("answer", row) and ("attempt", (key,)), one transaction a write
        self._rows: io_thread.WriteQueue[tuple[str, tuple]] = io_thread.WriteQueue(self._flush)
        self.write_error: str | None = None  # the last failed write, while rows wait for a retry
        self._retry_s = retry_s
        # answers a run before this one could not write: written now (or queued, and served)
        self._spill_sources: list[Path] = []
        saved: list[tuple[str, tuple]] = []
        for claimed in _claim_spills(self.path):
            rows = _read_spill(claimed)
            if rows is not None:  # a file that cannot be read is left for a later run, never deleted unread
                self._spill_sources.append(claimed)
                saved += rows
        if saved:
            self._rows.put_back(saved)
            self._flush()  # on this thread: the IO thread has not used the connection yet

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

    def stuck(self) -> CacheError | None:
        """The error to stop the run with once writes have failed for longer than
        ``give_up_s`` (None while they succeed, or fail for less)."""
        since = self._failing_since
        if since is None or time.monotonic() - since <= self._give_up_s:
            return None
        return CacheError(
            f"the answer cache {self.path} could not be written for {self._give_up_s:g} s ({self.write_error}): "
            "another process keeps it locked, or its disk is full; the run stops here so that no more answers are "
            "paid for than can be kept (those received are saved at exit)"
        )

    def _select(self, key: str) -> tuple | None:
        """The row for ``key``, waiting out another process's lock up to ``give_up_s``."""
        began = time.monotonic()
        while True:
            try:
                return self._db.execute("SELECT completion FROM answers WHERE key = ?", (key,)).fetchone()
            except sqlite3.OperationalError as exc:  # locked past the busy timeout
                if time.monotonic() - began > self._give_up_s:
                    raise CacheError(f"the answer cache {self.path} could not be read for {self._give_up_s:g} s ({exc}); "
                                     "another process keeps it locked; the run stops here") from None  # fmt: skip
                time.sleep(min(self._retry_s, 1.0))
            except sqlite3.DatabaseError as exc:
                raise CacheError(f"the answer cache {self.path} cannot be read ({exc}); pass --cache with another path, or --no-cache") from None

    def _get_now(self, key: str) -> Completion | None:
        if not self.read:
            return None
        row = self._select(key)
        if row is None and self.write_error is not None:  # a row waiting out a failed write
            row = next(((r[5],) for kind, r in reversed(self._rows.waiting()) if kind == "answer" and r[0] == key), None)
        if row is None:
            return None
        self.hits += 1
        return Completion.model_validate_json(row[0]).model_copy(update={"cached": True})

    def get(self, key: str) -> Completion | None:
        """The cached answer for ``key`` (waits for the IO thread: not for the event loop)."""
        return io_thread.wait(self._get_now, key)

    async def aget(self, key: str) -> Completion | None:
        """The cached answer for ``key``, read on the IO thread (after every queued write)."""
        if not self.read:
            return None
        return await io_thread.run(self._get_now, key)

    def put(self, key: str, completion: Completion, role: str, question_id: str, sample: int) -> None:
        """Queue an answer to be stored (failures are not: a failure is asked again)."""
        if completion.error is not None:
            return
        body = completion.model_dump_json(exclude={"cached", "retryable"})
        self._rows.add(("answer", (key, completion.model, role, question_id, sample, body, time.time())))

    def note_attempt(self, key: str) -> None:
        self._rows.add(("attempt", (key,)))

    def _flush(self) -> None:
        """On the IO thread: write every queued row in one transaction. On failure the rows
        go back to the queue, to be written by the next flush."""
        if self._db is None:
            return  # closed
        rows = self._rows.take()
        if not rows:
            return
        answers = [r for kind, r in rows if kind == "answer"]
        attempts = [r for kind, r in rows if kind == "attempt"]
        try:
            if self._db.in_transaction:  # a ROLLBACK that failed last time (a full disk) left one open
                self._db.execute("ROLLBACK")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", answers)
                self._db.executemany("INSERT INTO attempts VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", attempts)
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise
        except Exception as exc:  # busy past the timeout, disk full (or anything else): keep the rows, try again
            self.write_error = str(exc)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
            self._rows.put_back(rows)
            retry = threading.Timer(self._retry_s, self._retry)
            retry.daemon = True
            retry.start()
            return
        self.write_error = None
        self._failing_since = None
        self.stored += len(answers)
        self._drop_spill_sources()  # their rows were in this (or an earlier) transaction

    def _retry(self) -> None:
        if self._db is not None:
            self._rows.kick()

    def attempt_counts(self) -> dict[str, int]:
        """How often each key was sent: the soak's and the crash test's measure of repeats."""
        return io_thread.wait(lambda: (self._flush(), dict(self._db.execute("SELECT key, n FROM attempts")))[1])

    def _close_now(self) -> None:
        if self._db is None:
            return  # closed already
        try:
            self._flush()
            left = self._rows.take()
            if left:
                self._spill(left)
        finally:
            self._db.close()
            self._db = None  # type: ignore[assignment]

    def _drop_spill_sources(self) -> None:
        for p in self._spill_sources:
            with contextlib.suppress(OSError):
                p.unlink()
        self._spill_sources = []

    def spill_note(self) -> str | None:
        """What to tell the user when rows were saved to a spill file at close (else None)."""
        if self.spilled is None:
            return None
        n, where = self.spilled
        same_tmp = "" if where.parent == self.path.parent else " (run it with the same TMPDIR)"
        return (f"{n} answers could not be written to the answer cache {self.path} ({self.write_error}); "
                f"they are saved in {where}, and the next run with this cache adds them to it{same_tmp}")

    def _spill(self, rows: list[tuple[str, tuple]]) -> None:
        """Save the rows that could not be written where the next run finds them (beside
        the cache, else in a private folder in the temporary folder); ``CacheError`` if
        neither can be written. Each run writes its own file, so two runs sharing a cache
        never overwrite each other's."""
        answers = sum(1 for kind, _ in rows if kind == "answer")
        text = "".join(json.dumps([kind, list(row)]) + "\n" for kind, row in rows)
        why = []
        for folder, prefix in _spill_places(self.path):
            target = folder / f"{prefix}{os.getpid()}-{os.urandom(4).hex()}.jsonl"
            partial = target.with_name(target.name + ".partial")  # not a spill until renamed: never read half written
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with open(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(partial, target)
            except OSError as exc:
                why.append(f"{folder}: {exc.strerror or exc}")
                with contextlib.suppress(OSError):
                    partial.unlink()
                continue
            self._drop_spill_sources()  # their rows are in this file now
            self.spilled = (answers, target)
            return
        raise CacheError(f"{self.path}: {answers} answers could not be written to the answer cache ({self.write_error}) "
                         f"nor saved beside it ({'; '.join(why)}); a re-run asks for them again")  # fmt: skip

    def close(self) -> None:
        """Write what is queued and close (waits for the IO thread)."""
        io_thread.wait(self._close_now)

    async def aclose(self) -> None:
        await io_thread.run(self._close_now)

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _private_tmp() -> Path | None:
    """This user's folder for spills in the temporary folder, 0700; None if it cannot be made
    or is not safely ours (another user could otherwise plant answers for us to import)."""
    folder = Path(tempfile.gettempdir()) / f"symoe-unsaved-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return folder


def _spill_places(cache: Path) -> list[tuple[Path, str]]:
    """(folder, name prefix) where a spill of ``cache`` may be, by preference."""
    places = [(cache.parent, f"{cache.name}.unsaved-")]
    private = _private_tmp()
    if private is not None:
        places.append((private, hashlib.sha256(str(cache.resolve()).encode()).hexdigest()[:16] + "-"))
    return places


def spill_files(cache: Path) -> list[Path]:
    """The spills of ``cache`` waiting for a run, including those a run claimed and did not finish."""
    found = []
    for folder, prefix in _spill_places(Path(cache)):
        with contextlib.suppress(OSError):
            found += [p for p in folder.iterdir() if p.name.startswith(prefix) and (p.name.endswith(".jsonl") or ".jsonl.claimed-" in p.name)]
    return sorted(found)


def _claim_spills(cache: Path) -> list[Path]:
    """Take the waiting spills for this process by renaming them (atomic: two runs opening
    one cache never both import a file). A file claimed by a process that is gone (killed
    before its import was written) is taken again."""
    claimed = []
    for p in spill_files(cache):
        if ".jsonl.claimed-" in p.name:
            owner = p.name.rsplit("-", 1)[1]
            if owner.isdigit() and (int(owner) == os.getpid() or psutil.pid_exists(int(owner))):
                continue
            base = p.name.split(".claimed-")[0]
        else:
            base = p.name
        mine = p.with_name(f"{base}.claimed-{os.getpid()}")
        try:
            os.rename(p, mine)
        except OSError:
            continue  # another run took it first
        claimed.append(mine)
    return claimed


def _read_spill(path: Path) -> list[tuple[str, tuple]] | None:
    """The rows of a spill file; None if it cannot be read. Lines that are damaged or not
    rows of this schema are skipped: the rest is still worth keeping."""
    rows: list[tuple[str, tuple]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    kind, row = json.loads(line)
                except (ValueError, TypeError, RecursionError):
                    continue
                if kind == "answer" and isinstance(row, list) and len(row) == 7 and _answer_row(row):
                    rows.append((kind, tuple(row)))
                elif kind == "attempt" and isinstance(row, list) and len(row) == 1 and isinstance(row[0], str):
                    rows.append((kind, tuple(row)))
    except OSError:
        return None
    return rows


def _answer_row(row: list) -> bool:
    """Types SQLite can bind, as ``put`` makes them: a damaged row must not fail every flush after it."""
    key, model, role, qid, sample, body, at = row
    return (all(isinstance(v, str) for v in (key, model, role, qid, body)) and isinstance(sample, int)
            and isinstance(at, (int, float)) and not isinstance(sample, bool))  # fmt: skip
