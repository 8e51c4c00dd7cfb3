"""User corrections: a predicted label marked wrong, a missing one added, kept in SQLite for training.

The app and `POST /feedback` both write here; `papertasks feedback export` reads it back as JSONL
that `papertasks prepare --extra` merges into the training data. Standard library only (sqlite3, in
WAL mode with full sync, so a killed server keeps every record it acknowledged), one short
transaction per record, so concurrent writers (threads or processes) queue on SQLite's lock
instead of losing records. Records hold JSON text only: nothing read back is executed or unpickled.

The database is $PAPERTASKS_FEEDBACK_DB, else feedback.sqlite3 in /data (the folder a Hugging
Face Space keeps across restarts) when it is writable, else in ~/.papertasks.
"""
from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

try:  # imported as part of the papertasks package, or as a sibling module in the Space
    from .inputs import InputError
    from .manifest import bundle_fingerprint
except ImportError:
    from inputs import InputError
    from manifest import bundle_fingerprint

DB_ENV = "PAPERTASKS_FEEDBACK_DB"
DB_NAME = "feedback.sqlite3"
SPACE_STORAGE = Path("/data")
LOCAL_STORAGE = Path.home() / ".papertasks"
MAX_LABELS = 64  # labels in one correction at most
BUSY_TIMEOUT_S = 30  # how long a writer waits for another's transaction
_SCHEMA = """CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    paper_id TEXT,
    text TEXT NOT NULL,
    predicted TEXT NOT NULL,
    scores TEXT NOT NULL,
    corrected TEXT NOT NULL
)"""
_JSON_COLUMNS = ("predicted", "scores", "corrected")


class StoreError(RuntimeError):
    """The feedback database cannot be opened or written; the message is one line naming the path."""


def default_path() -> Path:
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV])
    if SPACE_STORAGE.is_dir() and os.access(SPACE_STORAGE, os.W_OK):
        return SPACE_STORAGE / DB_NAME
    return LOCAL_STORAGE / DB_NAME


def _labels(value, field: str, known: list[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{field}: send a list of label names (GET /labels lists them)")
    if len(value) > MAX_LABELS:
        raise InputError(f"{field}: {len(value)} labels; at most {MAX_LABELS}")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise InputError(f"{field}: unknown label {unknown[0][:64]!r}; this model knows {len(known)} labels "
                         "(GET /labels lists them)")
    return list(dict.fromkeys(value))


def corrected_labels(known: list[str], predicted: list[str], wrong, missing) -> list[str]:
    """The labels the user says the paper has: the predicted ones but those marked wrong, plus those
    added. InputError for an unknown label, a 'wrong' one that was not predicted, a 'missing' one that
    was, or a correction that changes nothing."""
    wrong, missing = _labels(wrong, "wrong", known), _labels(missing, "missing", known)
    if not wrong and not missing:
        raise InputError("empty correction: mark a predicted label wrong, or add a missing one")
    not_predicted = [lab for lab in wrong if lab not in predicted]
    if not_predicted:
        raise InputError(f"wrong: {not_predicted[0]!r} was not predicted (predicted: {', '.join(predicted) or 'none'})")
    already = [lab for lab in missing if lab in predicted]
    if already:
        raise InputError(f"missing: {already[0]!r} was already predicted; mark labels wrong with `wrong`")
    return [lab for lab in predicted if lab not in wrong] + missing


def record(predictor, model: str, text: str, prediction: dict, corrected: list[str],
           paper_id: str | None = None) -> dict:
    """A feedback record: the text, which model (its bundle fingerprint as the version) predicted
    what with which scores, the corrected labels and when (UTC)."""
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": model,
            "model_version": bundle_fingerprint(predictor.model_dir) or "unversioned",
            "paper_id": None if paper_id is None else str(paper_id), "text": text,
            "predicted": list(prediction["labels"]), "scores": dict(prediction["scores"]), "corrected": corrected}


class FeedbackStore:
    """The SQLite file of records; each call opens its own connection, so threads and processes may
    share one store."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()

    def _connect(self, create: bool) -> sqlite3.Connection:
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise StoreError(f"feedback database {self.path}: no such file (set {DB_ENV} or pass --db)")
            uri = f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'ro'}"
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            if create:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.execute(_SCHEMA)
            return connection
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"feedback database {self.path}: cannot be {'written' if create else 'read'} "
                             f"({type(e).__name__}: {e}); set {DB_ENV} to a writable file") from None

    def add(self, entry: dict) -> int:
        """Store one record (from `record`) in its own committed transaction; returns its id."""
        values = [json.dumps(entry[k], ensure_ascii=False) if k in _JSON_COLUMNS else entry[k]
                  for k in ("created", "model", "model_version", "paper_id", "text", *_JSON_COLUMNS)]
        connection = self._connect(create=True)
        try:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                cursor = connection.execute(
                    "INSERT INTO feedback (created, model, model_version, paper_id, text, predicted, scores, "
                    "corrected) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                return int(cursor.lastrowid)
        except sqlite3.Error as e:
            raise StoreError(f"feedback database {self.path}: cannot be written ({type(e).__name__}: {e})") from None
        finally:
            connection.close()

    def records(self) -> list[dict]:
        """Every record, oldest first, with its JSON columns parsed."""
        connection = self._connect(create=False)
        try:
            connection.row_factory = sqlite3.Row
            rows = connection.execute("SELECT * FROM feedback ORDER BY id").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"feedback database {self.path}: cannot be read ({type(e).__name__}: {e})") from None
        finally:
            connection.close()
        return [{k: json.loads(row[k]) if k in _JSON_COLUMNS else row[k] for k in row.keys()} for row in rows]


def training_rows(records: list[dict]) -> list[dict]:
    """Records as rows `papertasks prepare --extra` reads: the paper's id (else 'feedback:N'), its text
    and the corrected labels, with what was predicted and by which model kept beside them."""
    return [{"id": r["paper_id"] or f"feedback:{r['id']}", "text": r["text"], "labels": r["corrected"],
             "predicted": r["predicted"], "model": r["model"], "model_version": r["model_version"],
             "created": r["created"]} for r in records]
