"""Example readers: parquet (or an in-memory table) -> featurized `Batch`es.

A source that fits the cache budget is featurized once, on first use, and kept as tensors (on the
training device): every epoch after that only reshuffles and slices them, with no Arrow work and no
thread. A larger source is streamed: batches are featurized on a background thread while the model
trains, and copied to the GPU ahead of use when there is one."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ranking.features import Batch, Featurizer

_END = object()
# featurized examples kept in memory per stream when `cache` is left to decide (bytes); a larger source
# is streamed from its files every epoch
CACHE_BYTES = 2 << 30
_FEATURIZE_ROWS = 1 << 16  # rows featurized per call when filling the cache


def parquet_files(source) -> list[Path]:
    """A parquet file, a folder of them, or a list of those -> the files, in order."""
    files = []
    for p in map(Path, source if isinstance(source, list) else [source]):
        if not p.exists():
            raise FileNotFoundError(f"no parquet files at {p}: no such file or folder.")
        files += sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no parquet files at {source}: the folder has no *.parquet.")
    return files


def _fold_single_rows(batches: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Merge every 1-row batch into a neighbour (the trailing one into the batch before it): batch norm
    cannot train on one row, and evaluation loses nothing by it. A source of one row stays one batch."""
    held = None
    for t in batches:
        if held is not None and (t.num_rows == 1 or held.num_rows == 1):
            held = pa.concat_tables([held, t])
            continue
        if held is not None:
            yield held
        held = t
    if held is not None:
        yield held


def _table_batches(
    source: pa.Table | str | os.PathLike | list, batch_size: int, shuffle: bool, seed: int
) -> Iterator[pa.Table]:
    batches = _row_batches(source, batch_size, shuffle, seed)
    return _fold_single_rows(batches) if batch_size > 1 else batches


def _row_batches(
    source: pa.Table | str | os.PathLike | list, batch_size: int, shuffle: bool, seed: int
) -> Iterator[pa.Table]:
    """Row batches from an in-memory table (shuffled when asked) or parquet files (streamed in file
    order; with shuffle, each file's row groups are read whole and shuffled within a window)."""
    if isinstance(source, pa.Table):
        n = source.num_rows
        idx = np.random.default_rng(seed).permutation(n) if shuffle else None
        for s in range(0, n, batch_size):
            yield source.take(idx[s : s + batch_size]) if shuffle else source.slice(s, batch_size)
        return
    files = parquet_files(source)
    rng = np.random.default_rng(seed)
    for f in files:
        pf = pq.ParquetFile(f)
        if not shuffle:
            for rb in pf.iter_batches(batch_size=batch_size):
                yield pa.Table.from_batches([rb])
            continue
        for rg in rng.permutation(pf.num_row_groups):
            t = pf.read_row_group(int(rg))
            idx = rng.permutation(t.num_rows)
            for s in range(0, t.num_rows, batch_size):
                yield t.take(idx[s : s + batch_size])


class ExampleStream:
    """Iterates featurized batches with `prefetch` batches prepared ahead on a worker thread.

    Batches hold `batch_size` rows, except the last of a file or row group; a batch that would hold a
    single row is merged into its neighbour (batch norm cannot train on one row).

    Args:
        source: a pa.Table, a parquet file, a folder of parquet files, or a list of those.
        featurizer: turns row batches into tensors.
        batch_size: rows per batch.  shuffle: shuffle rows each epoch (seeded by `seed` + epoch).
        device: where batches go; on CUDA they are pinned and copied on a side stream.
        prefetch: batches kept ready ahead of the consumer (streaming only).
        cache: keep the featurized examples as tensors after the first pass (True), stream every epoch
            (False), or None: cache when they fit in `cache_bytes`. A cached stream shuffles all its
            rows each epoch; a streamed parquet source shuffles within row groups.
    """

    def __init__(
        self,
        source,
        featurizer: Featurizer,
        *,
        batch_size: int = 512,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        prefetch: int = 4,
        cache: bool | None = None,
        cache_bytes: int = CACHE_BYTES,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1.")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes={cache_bytes}: must be >= 0 (0 streams every source).")
        self.source, self.featurizer = source, featurizer
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.epoch = 0
        self.cache, self.cache_bytes = cache, cache_bytes
        self._cached: Batch | None = None
        self._rows: int | None = None

    @property
    def num_rows(self) -> int:
        if self._rows is None:
            if isinstance(self.source, pa.Table):
                self._rows = self.source.num_rows
            else:
                self._rows = sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(self.source))
        return self._rows

    def row_bytes(self) -> int:
        """Bytes one featurized example takes (its Batch row)."""
        fz, s = self.featurizer, self.featurizer.schema
        hist = s.history.length if fz.use_history else 0
        labels = len(s.tasks) if fz.with_labels else 0
        return (
            8 * sum(f.width for f in s.sparse)
            + 4 * len(s.dense)
            + 17 * hist
            + 8 * len(s.calibration)
            + 4 * labels
        )

    @property
    def cached(self) -> bool:
        """Whether the stream keeps its featurized examples (decided once, from `cache` and the budget)."""
        if self.cache is None:
            self.cache = self.num_rows * self.row_bytes() <= self.cache_bytes
        return self.cache

    def _fill_cache(self) -> Batch | None:
        """Featurize the whole source once, in large chunks; None for an empty source."""
        parts = [self.featurizer(t) for t in _row_batches(self.source, _FEATURIZE_ROWS, False, 0)]
        if not parts:
            return None
        full = concat_batches(parts)
        self._rows = len(full)
        return full.to(self.device) if self.device.type == "cuda" else full

    def featurized(self) -> Batch | None:
        """Every row of the source as one Batch, in source order (None when empty): the cache, filled on
        first use whatever `cache` says."""
        if self._cached is None:
            self._cached = self._fill_cache()
        return self._cached

    def _cached_batches(self) -> Iterator[Batch]:
        full = self.featurized()
        if full is None:
            return
        n, b = len(full), self.batch_size
        bounds = [(s, min(s + b, n)) for s in range(0, n, b)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:  # fold a trailing single row
            bounds[-2:] = [(bounds[-2][0], n)]
        if not self.shuffle:
            for s, e in bounds:
                yield full.slice(s, e)
            return
        # the same permutation as the streamed in-memory table gets, so both paths see the same batches
        order = torch.from_numpy(np.random.default_rng(self.seed + self.epoch).permutation(n))
        order = order.to(full.sparse.device)
        for s, e in bounds:
            yield full.select(order[s:e])

    def __len__(self) -> int:
        """Batches per epoch: exact for in-memory tables and cached streams, an estimate for streamed parquet
        (each file ends a batch)."""
        n, b = self.num_rows, self.batch_size
        return -(-n // b) - (b > 1 and n > 1 and n % b == 1)

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        try:
            for table in _table_batches(self.source, self.batch_size, self.shuffle, self.seed + self.epoch):
                if stop.is_set():
                    return
                batch = self.featurizer(table)
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                q.put(batch)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
        finally:
            q.put(_END)

    def __iter__(self) -> Iterator[Batch]:
        if self.cached:
            try:
                yield from self._cached_batches()
            finally:
                self.epoch += 1
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(q, stop), daemon=True)
        worker.start()
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        pending = None
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    break
                if cuda:
                    with torch.cuda.stream(stream):
                        moved = item.to(self.device, non_blocking=True)
                    if pending is not None:
                        yield pending
                    current = torch.cuda.current_stream(self.device)
                    current.wait_stream(stream)
                    for t in moved.inputs() + ((moved.labels,) if moved.labels is not None else ()):
                        t.record_stream(current)  # allocated on the side stream, used on the current one
                    pending = moved
                else:
                    yield item
            if pending is not None:
                yield pending
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
            self.epoch += 1


def concat_batches(parts: list[Batch]) -> Batch:
    """One Batch holding the rows of `parts`, in order."""
    first = parts[0]
    return Batch(
        **{
            f.name: None if getattr(first, f.name) is None else torch.cat([getattr(p, f.name) for p in parts])
            for f in dataclass_fields(Batch)
        }
    )
