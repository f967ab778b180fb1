"""Parquet reading and writing against the schemas of catalog.schemas.

Writers are atomic and durable: a table goes to a temporary name beside its destination, is
flushed to disk (fsync), renamed into place, and the rename itself is flushed (fsync of the folder),
so neither a crash nor a power loss leaves a half-written file that looks whole. Readers validate the
file's schema and name the file and the column on any mismatch.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.schemas import is_added


class SchemaMismatchError(ValueError):
    """A parquet file does not match the schema the reader expects."""

    def __init__(self, path: str | os.PathLike, column: str | None, problem: str, fix: str):
        self.path = str(path)
        self.column = column
        where = f"{self.path}" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {problem}. {fix}")


REBUILD_FIX = "The file is corrupt or truncated; delete it and rebuild it."


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def sync_file(path: str | os.PathLike) -> None:
    """Flush `path`'s data to disk (fsync), so a rename that follows never exposes a file whose
    contents a power loss could still take away."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: str | os.PathLike) -> None:
    """Flush `path`'s entries (a rename, link or unlink inside it) to disk. File systems that cannot
    fsync a folder (some network and FUSE mounts) are skipped; a real I/O error is raised."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_parquet_synced(table: pa.Table, path: str | os.PathLike) -> None:
    """Write `table` (zstd) at `path` and fsync it; no rename (the caller claims the file)."""
    pq.write_table(table, path, compression="zstd")
    sync_file(path)


def conform(table: pa.Table, schema: pa.Schema, *, source: str = "<table>") -> pa.Table:
    """Select and cast `table`'s columns to `schema`, with errors that name the column."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaMismatchError(
            source,
            missing[0],
            f"missing column(s) {missing}; present: {table.column_names}",
            "Produce every column of the schema in catalog.schemas.",
        )
    columns = []
    for field in schema:
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            raise SchemaMismatchError(
                source,
                field.name,
                f"{col.null_count} null value(s) in a non-nullable column",
                "Fill or drop those rows before writing.",
            )
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatchError(
                    source,
                    field.name,
                    f"type {col.type} cannot be cast to {field.type} ({exc})",
                    "Convert the column to the schema's type.",
                ) from exc
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def write_table(table: pa.Table, path: str | os.PathLike, schema: pa.Schema) -> Path:
    """Write `table` conformed to `schema` at `path`, atomically. Returns the path."""
    path = Path(path)
    table = conform(table, schema, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write_parquet_synced(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(path.parent)
    return path


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write `obj` as indented JSON at `path`, atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        sync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(path.parent)
    return path


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy `src` to `dest` (with its mode), atomically: an interrupted copy never appears at `dest`."""
    dest = Path(dest)
    tmp = _tmp_name(dest)
    try:
        shutil.copy2(src, tmp)
        sync_file(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(dest.parent)
    return dest


def staging_folder(dest: str | os.PathLike) -> Path:
    """An empty folder beside `dest` to build a replacement in; hand it to `replace_folder` when complete."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def replace_folder(tmp: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Swap a completed folder into place: readers see the old folder or the new one, never a mix."""
    tmp, dest = Path(tmp), Path(dest)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    sync_folder(dest.parent)
    shutil.rmtree(old, ignore_errors=True)
    return dest


class ParquetStreamWriter:
    """Append record batches to one parquet file in bounded memory; renamed into place on close.

    Use as a context manager: on an exception the partial file is removed and nothing appears at
    `path`.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(self.path)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        table = conform(table, self.schema, source=str(self.path))
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        sync_file(self._tmp)
        os.replace(self._tmp, self.path)
        sync_folder(self.path.parent)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetStreamWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_schema(path: str | os.PathLike, *, unreadable_fix: str = REBUILD_FIX) -> pa.Schema:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such parquet file. Check the path, or build it first.")
    if path.is_dir():  # a folder of parquet parts (what Ray Data writes): the first part's schema
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise FileNotFoundError(
                f"{path}: a folder without .parquet files. Check the path, or build it first."
            )
        path = parts[0]
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatchError(
            path,
            None,
            f"not a readable parquet file ({exc})",
            unreadable_fix,
        ) from exc


def check_schema(path: str | os.PathLike, schema: pa.Schema, *, unreadable_fix: str = REBUILD_FIX) -> None:
    """Raise SchemaMismatchError naming the first column of `path` that does not match."""
    found = read_schema(path, unreadable_fix=unreadable_fix)
    missing = [f.name for f in schema if found.get_field_index(f.name) < 0 and not is_added(f)]
    if missing:
        raise SchemaMismatchError(
            path,
            missing[0],
            f"column(s) {missing} missing; the file has {found.names}",
            "Rebuild the file with the current catalog version.",
        )
    for field in schema:
        if found.get_field_index(field.name) < 0:
            continue  # an added column the file predates
        got = found.field(found.get_field_index(field.name)).type
        if got != field.type:
            raise SchemaMismatchError(
                path,
                field.name,
                f"type is {got}, expected {field.type}",
                "Rebuild the file with the current catalog version.",
            )


def read_table(path: str | os.PathLike, schema: pa.Schema, *, unreadable_fix: str = REBUILD_FIX) -> pa.Table:
    """Read the schema's columns of `path`, validated. Extra columns in the file are ignored; a column added
    to the schema later (catalog.schemas.is_added) that the file predates reads as nulls.
    `unreadable_fix`: what the error tells the user to do when the file is corrupt or truncated."""
    check_schema(path, schema, unreadable_fix=unreadable_fix)
    present = set(read_schema(path, unreadable_fix=unreadable_fix).names)
    try:
        table = pq.read_table(path, columns=[n for n in schema.names if n in present])
        for f in schema:
            if f.name not in present:
                table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatchError(
            path,
            None,
            f"could not be read ({exc})",
            unreadable_fix,
        ) from exc
    return conform(table, schema, source=str(path))
