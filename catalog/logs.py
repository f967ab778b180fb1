"""Logs: folders of parquet parts in one schema, appended batch by batch.

Production logging and the member simulator write the same folders, so everything downstream
(aggregation, ranker training) reads real or simulated logs unchanged. Each part is written
complete under a temporary name and flushed to disk, then claimed under the next free part number by a
hard link that fails if the name exists, and the folder is flushed too: a reader never sees half a part
(not even after a power loss), and writers sharing a folder lose none. A temporary part left behind by a
writer that died (`.part.tmp-<host>-<pid>-<hex>`: written on this host by a pid no longer alive, and
untouched for TEMP_PART_MIN_AGE_S) is removed when the next writer opens the folder; a live writer's
temporary part is never touched.

Three logs use this layout: feedback logs (FEEDBACK_LOG, impressions with their engagement), the
ranking endpoint's impression log (IMPRESSION_LOG, what was served, before any engagement) and its
events log (ENGAGEMENT_EVENTS, what clients reported on POST /feedback).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from pathlib import Path

import pyarrow as pa

from catalog.io import conform, read_table, sync_folder, write_parquet_synced
from catalog.schemas import ENGAGEMENT_EVENTS, FEEDBACK_LOG, IMPRESSION_LOG

_PART = re.compile(r"part-(\d+)\.parquet")
# a writer's temporary part: .part.tmp-<host>-<pid>-<hex>; older writers wrote .part.tmp-<pid>-<hex>
# (through write_table, which added its own .tmp-<pid> suffix)
_TMP_PART = re.compile(r"\.?\.part\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-[0-9a-f]{32}(?:\.tmp-\d+)?")
TEMP_PART_MIN_AGE_S = 600.0  # a temporary part this recently written is kept even if its pid looks dead
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"

# What to do about a log part that cannot be read: unlike a derived table, a log cannot be rebuilt.
UNREADABLE_PART_FIX = (
    "A log part cannot be rebuilt from anything else: move it out of the log folder (keep it for "
    "inspection), restore it from a backup or a re-export of the same events if there is one, and run again"
)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_dead_temp_parts(folder: str | os.PathLike, min_age_s: float | None = None) -> list[Path]:
    """Remove the temporary parts in `folder` whose writer died on this host (pid not alive) and that
    were last written at least `min_age_s` ago (default TEMP_PART_MIN_AGE_S: a writer in another pid
    namespace, such as a container sharing the folder and the host name, looks dead but keeps writing);
    returns them. Temporary parts of live writers, and of writers on other hosts, are kept."""
    min_age_s = TEMP_PART_MIN_AGE_S if min_age_s is None else min_age_s
    removed, now = [], time.time()
    for p in Path(folder).glob("*.part.tmp-*"):
        m = _TMP_PART.fullmatch(p.name)
        if not m or (m["host"] is not None and m["host"] != _HOST) or _pid_alive(int(m["pid"])):
            continue
        try:
            if now - p.stat().st_mtime < min_age_s:
                continue
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        sync_folder(folder)
    return removed


class LogWriter:
    """Appends batches in `schema` to `folder` as part-NNNNNN.parquet files."""

    def __init__(self, folder: str | os.PathLike, schema: pa.Schema):
        self.folder = Path(folder)
        self.schema = schema
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self.removed_temp_parts = remove_dead_temp_parts(self.folder)  # left by writers that died
        numbers = [
            int(m.group(1)) for p in self.folder.glob("part-*.parquet") if (m := _PART.fullmatch(p.name))
        ]
        self._next = max(numbers, default=-1) + 1

    def append(self, rows: pa.Table) -> Path:
        """Write `rows` as the next free part. The part is claimed exclusively (a hard link of a
        complete temporary file), so writers sharing the folder never overwrite each other's parts; the
        part and the folder are flushed to disk before this returns."""
        table = conform(rows, self.schema, source=str(self.folder))
        tmp = self.folder / f".part.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            write_parquet_synced(table, tmp)
            while True:
                path = self.folder / f"part-{self._next:06d}.parquet"
                self._next += 1
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:
                    continue
        finally:
            tmp.unlink(missing_ok=True)
        sync_folder(self.folder)
        self.rows += rows.num_rows
        return path


class FeedbackLogWriter(LogWriter):
    """Appends FEEDBACK_LOG batches (impressions with their engagement)."""

    def __init__(self, folder: str | os.PathLike):
        super().__init__(folder, FEEDBACK_LOG)


class ImpressionLogWriter(LogWriter):
    """Appends IMPRESSION_LOG batches (what the ranking endpoint served)."""

    def __init__(self, folder: str | os.PathLike):
        super().__init__(folder, IMPRESSION_LOG)


class EventLogWriter(LogWriter):
    """Appends ENGAGEMENT_EVENTS batches (what clients reported about served items)."""

    def __init__(self, folder: str | os.PathLike):
        super().__init__(folder, ENGAGEMENT_EVENTS)


def log_parts(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"log folder {folder} does not exist. Point at a folder written by a LogWriter "
            "(the simulator, the ranking endpoint or production logging)."
        )
    return sorted(p for p in folder.glob("part-*.parquet") if _PART.fullmatch(p.name))


def read_log(folder: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """All parts of a log folder, each validated against `schema`; any unreadable part is an error
    (catalog.feedback reads feedback logs leniently, quarantining such a part instead)."""
    parts = log_parts(folder)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([read_table(p, schema, unreadable_fix=UNREADABLE_PART_FIX + ".") for p in parts])


def read_feedback_log(folder: str | os.PathLike) -> pa.Table:
    return read_log(folder, FEEDBACK_LOG)


def read_impression_log(folder: str | os.PathLike) -> pa.Table:
    return read_log(folder, IMPRESSION_LOG)


def read_event_log(folder: str | os.PathLike) -> pa.Table:
    return read_log(folder, ENGAGEMENT_EVENTS)
