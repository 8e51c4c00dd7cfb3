"""Resumable JSONL output: whole lines only, no duplicate ids, and a state file with the paging cursor.

A scrape can be killed at any moment (Ctrl-C, OOM, lost network). The rules that make a rerun with
the same arguments pick up where it stopped, without losing or repeating a paper:
- each record is one `os.write` of a complete line; a torn last line (power loss) is cut on open;
- the output is fsynced before the state file (written atomically) records the cursor, so the
  state never points past data on disk; records written after the last checkpoint are fetched
  again and dropped as duplicates, because every id already in the file is skipped.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from papertasks.errors import UserError
from papertasks.io import read_json, write_json

log = logging.getLogger(__name__)


def state_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".state.json")


def fingerprint(identity: dict) -> str:
    """A short hash of what defines the result set, so a rerun can tell 'same command' from 'new one'."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """What the state file beside the output holds."""

    fingerprint: str
    identity: dict
    cursor: dict | None  # where the next page starts; None = from the first page
    done: bool  # the source was exhausted (not just --max reached)

    @classmethod
    def load(cls, output: Path) -> RunState | None:
        path = state_path_for(output)
        if not path.exists():
            return None
        try:
            raw = read_json(path)
            return cls(raw["fingerprint"], raw["identity"], raw["cursor"], raw["done"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s (%s): starting from the first page", path, e)
            return None

    def save(self, output: Path) -> None:
        write_json(state_path_for(output), {
            "fingerprint": self.fingerprint, "identity": self.identity, "cursor": self.cursor,
            "done": self.done, "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })


class ResumableJsonl:
    """Append-only JSONL writer that knows the ids already written and repairs a torn last line."""

    def __init__(self, path: Path, fsync_every: int = 100):
        if path.suffix == ".gz":
            raise UserError(f"{path}: write plain .jsonl (appending to gzip cannot be resumed); compress it afterwards")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise UserError(f"{path} is being written by another scrape; wait for it or use another -o") from None
        self._drop_torn_tail()
        self.ids = self._read_ids()
        self._fsync_every = fsync_every
        self._unsynced = 0

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        while written < len(line):  # regular files take it whole; a torn rest is cut on the next open
            written += os.write(self._fd, line[written:])
        self.ids.add(record["id"])
        self._unsynced += 1
        if self._unsynced >= self._fsync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._unsynced = 0

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def _drop_torn_tail(self) -> None:
        size = os.fstat(self._fd).st_size
        keep, pos = 0, size
        while pos > 0:
            start = max(0, pos - 65536)
            chunk = os.pread(self._fd, pos - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        if keep < size:
            log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", self.path, size - keep)
            os.ftruncate(self._fd, keep)

    def _read_ids(self) -> set[str]:
        ids = set()
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    ids.add(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{self.path}:{lineno} is not a scraped record; fix or remove that line") from None
        return ids
