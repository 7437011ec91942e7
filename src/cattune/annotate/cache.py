"""The on-disk annotation cache: what makes an interrupted run resumable.

An append-only JSONL file, one line per finished item: ``{"key": <prompt hash>, "outcome": ...}``.
Each line is written with a single ``write`` under an exclusive lock and ``fsync``-ed before the
item counts as done, so a process killed at any moment (SIGKILL included) loses at most the items
whose requests were still in flight; at most one partial last line can result, and it is ignored
(and fenced off by a newline) when the file is read again. A key seen twice keeps its last outcome
(a failure retried with ``retry_failed`` is superseded by its new result).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

from cattune.annotate.outcome import ItemOutcome

logger = logging.getLogger(__name__)


class AnnotationCache:
    """Finished outcomes by cache key, backed by an append-only, fsync-ed JSONL file."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._entries: dict[str, ItemOutcome] = {}
        self._lock = threading.Lock()
        self.unreadable_lines = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                    self._entries[obj["key"]] = ItemOutcome.from_json(obj["outcome"])
                except (ValueError, KeyError, TypeError) as exc:
                    self.unreadable_lines += 1
                    logger.warning("%s:%d: ignoring an unreadable cache line (%s); a run killed while "
                                   "writing leaves one such line, its item is annotated again",
                                   self.path, number, type(exc).__name__)
        logger.info("%s: %d cached outcomes", self.path, len(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> set[str]:
        return set(self._entries)

    def get(self, key: str) -> ItemOutcome | None:
        return self._entries.get(key)

    def put(self, key: str, outcome: ItemOutcome) -> None:
        """Record a finished outcome durably; returns once it is on disk."""
        line = json.dumps({"key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "outcome": outcome.to_json()},
                          ensure_ascii=False) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A line cut short by a killed writer must not swallow this one.
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._entries[key] = outcome
