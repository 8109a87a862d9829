"""Where a webhook sink keeps the events it has not delivered yet: in memory, or on disk in SQLite (the
standard library's), so that they outlive a receiver's long outage and a restart of the container
(the pod's volume survives it: an emptyDir lives as long as the pod, a persistent volume longer).

Both keep events in publishing order, hand out one batch at a time (the sink sends one request at a
time), and drop the oldest waiting events when over capacity. A batch is removed only once the sink
is done with it (delivered, or refused for good); a batch that failed goes back to the head.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from pathlib import Path
from typing import Protocol


class Spool(Protocol):
    persistent: bool  # what is left at shutdown is kept for the next start

    def __len__(self) -> int: ...  # events held, the batch in flight included

    def append(self, line: str) -> None: ...

    def take(self, count: int) -> list[str]: ...  # the oldest `count` events: now the batch in flight

    def done(self) -> None: ...  # the batch in flight is finished with: forget it

    def retry(self) -> None: ...  # the batch in flight goes back to the head

    def trim(self, capacity: int) -> int: ...  # drop the oldest waiting events beyond capacity; how many

    def close(self) -> int: ...  # events lost by closing (not kept anywhere)


class MemorySpool:
    persistent = False

    def __init__(self) -> None:
        self._waiting: deque[str] = deque()
        self._in_flight: list[str] = []

    def __len__(self) -> int:
        return len(self._waiting) + len(self._in_flight)

    def append(self, line: str) -> None:
        self._waiting.append(line)

    def take(self, count: int) -> list[str]:
        self._in_flight = [self._waiting.popleft() for _ in range(min(count, len(self._waiting)))]
        return list(self._in_flight)

    def done(self) -> None:
        self._in_flight = []

    def retry(self) -> None:
        self._waiting.extendleft(reversed(self._in_flight))
        self._in_flight = []

    def trim(self, capacity: int) -> int:
        excess = min(len(self) - capacity, len(self._waiting))
        for _ in range(max(excess, 0)):
            self._waiting.popleft()
        return max(excess, 0)

    def close(self) -> int:
        lost = len(self)
        self._waiting.clear()
        self._in_flight = []
        return lost


class DiskSpool:
    """Events as rows of a SQLite table, in a file of their own. Each change is one transaction in
    write-ahead-log mode: an event appended is on disk before `append` returns (a crash of the
    process loses nothing; a crash of the machine may lose the last moments, synchronous=NORMAL)."""

    persistent = True

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT)"
        )
        self._count = int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])
        self._in_flight: list[int] = []

    def __len__(self) -> int:
        return self._count

    def append(self, line: str) -> None:
        self._db.execute("INSERT INTO events (body) VALUES (?)", (line,))
        self._count += 1

    def take(self, count: int) -> list[str]:
        rows = self._db.execute("SELECT id, body FROM events ORDER BY id LIMIT ?", (count,)).fetchall()
        self._in_flight = [int(r[0]) for r in rows]
        return [str(r[1]) for r in rows]

    def done(self) -> None:
        if self._in_flight:
            gone = self._db.execute("DELETE FROM events WHERE id <= ?", (self._in_flight[-1],)).rowcount
            self._count -= gone
        self._in_flight = []

    def retry(self) -> None:
        self._in_flight = []

    def trim(self, capacity: int) -> int:
        excess = self._count - capacity
        if excess <= 0:
            return 0
        after = self._in_flight[-1] if self._in_flight else 0
        gone = self._db.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)",
            (after, excess),
        ).rowcount
        self._count -= gone
        return int(gone)

    def close(self) -> int:
        self._in_flight = []
        self._db.close()
        return 0
