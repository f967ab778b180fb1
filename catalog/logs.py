"""Logs: folders of parquet parts in one schema, appended batch by batch.

Production logging and the member simulator write the same folders, so everything downstream
(aggregation, ranker training) reads real or simulated logs unchanged. Each part is written
complete under a temporary name, then claimed under the next free part number by a hard link that
fails if the name exists: a reader never sees half a part, and writers sharing a folder lose none.

Two logs use this layout: feedback logs (FEEDBACK_LOG, impressions with their engagement) and the
ranking endpoint's impression log (IMPRESSION_LOG, what was served, before any engagement).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pyarrow as pa

from catalog.io import read_table, write_table
from catalog.schemas import FEEDBACK_LOG, IMPRESSION_LOG

_PART = re.compile(r"part-(\d+)\.parquet")


class LogWriter:
    """Appends batches in `schema` to `folder` as part-NNNNNN.parquet files."""

    def __init__(self, folder: str | os.PathLike, schema: pa.Schema):
        self.folder = Path(folder)
        self.schema = schema
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        numbers = [
            int(m.group(1)) for p in self.folder.glob("part-*.parquet") if (m := _PART.fullmatch(p.name))
        ]
        self._next = max(numbers, default=-1) + 1

    def append(self, rows: pa.Table) -> Path:
        """Write `rows` as the next free part. The part is claimed exclusively (a hard link of a
        complete temporary file), so writers sharing the folder never overwrite each other's parts."""
        tmp = write_table(rows, self.folder / f".part.tmp-{os.getpid()}-{uuid.uuid4().hex}", self.schema)
        try:
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


def log_parts(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"log folder {folder} does not exist. Point at a folder written by a LogWriter "
            "(the simulator, the ranking endpoint or production logging)."
        )
    return sorted(p for p in folder.glob("part-*.parquet") if _PART.fullmatch(p.name))


def read_log(folder: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """All parts of a log folder, each validated against `schema`."""
    parts = log_parts(folder)
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([read_table(p, schema) for p in parts])


def read_feedback_log(folder: str | os.PathLike) -> pa.Table:
    return read_log(folder, FEEDBACK_LOG)


def read_impression_log(folder: str | os.PathLike) -> pa.Table:
    return read_log(folder, IMPRESSION_LOG)
