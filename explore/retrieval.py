"""Retrieval augmentation of the novelty LLM (after Google's RecSys'25 follow-up, arXiv 2510.20260).

The prompt for a history key carries the clusters members most often moved to next from that key in
fresh logs, so the model stays current between fine-tunes: the table is rebuilt from logs by a job
(jobs.build_retrieval) without retraining the model.

Table. For every history key seen in the logs, and for each of its suffixes (the last K-1, ..., 1
clusters) and the empty key (all transitions), the counts of the next novel clusters:

    level K     (c_1, ..., c_K) -> {next cluster: transitions}      the key itself
    level K-1   (c_2, ..., c_K) -> {...}                            back-off: its more recent suffix
    ...
    level 0     ()              -> {...}                            back-off: overall

`lookup(key, top)` lists up to `top` clusters not in the key: the key's own most frequent next clusters
first, then its suffixes', then overall (ties by cluster id), so every key gets a full list. During
training a member's own transitions are left out of its examples' lists (`member=`), as a held-out
member's are absent from the table at evaluation: the model learns how far to trust the list, not to
copy its own answer from it.

Sources: members' histories (HISTORIES: each step's next novel cluster, the SFT transitions; recent =
target run at or after `since`) and joined feedback logs (FEEDBACK_LOG: an impression of a cluster
outside the row's history key that was clicked, liked or shared).

Files (a "table folder"; a novelty model trained with --rag holds one too):
    retrieval.parquet   RETRIEVAL rows: history_key (0..K ids), next_clusters, counts (both by count desc)
    retrieval.json      {"format_version", "version" (sha256 of the rows, 12 hex), "k", "catalog_signature",
                         "sources", "since", "built_at", "transitions", "keys"}
No pickle: parquet and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

TABLE_FILE = "retrieval.parquet"
META_FILE = "retrieval.json"
FORMAT_VERSION = 1
BUILD = "python -m jobs.build_retrieval --catalog DIR --out DIR"  # how to get a table folder

RETRIEVAL = pa.schema(
    [
        pa.field("history_key", pa.list_(pa.int32()), nullable=False),  # K ids, a suffix of them, or []
        pa.field("next_clusters", pa.list_(pa.int32()), nullable=False),  # most transitions first
        pa.field("counts", pa.list_(pa.int64()), nullable=False),  # transitions to each, same order
    ]
)

Transition = tuple[tuple[int, ...], int, int]  # (history key, next novel cluster, member)


def _levels(key: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The key, its suffixes, and the empty key: the lookup's back-off order."""
    return [key[i:] for i in range(len(key))] + [()]


@dataclass
class RetrievalTable:
    """Next-novel-cluster counts per history key, its suffixes and overall (see the module docstring).

    Args:
        k: history key length K.
        counts: level key -> Counter of next clusters.
        meta: provenance (sources, since, built_at, catalog_signature); `version` is derived from the rows.
        by_member: (level key, member) -> that member's own counts; kept only in memory (training's
            leave-one-member-out lists), never written.
    """

    k: int
    counts: dict[tuple[int, ...], Counter]
    meta: dict = field(default_factory=dict)
    by_member: dict[tuple[tuple[int, ...], int], Counter] = field(default_factory=dict, repr=False)

    @classmethod
    def from_transitions(
        cls,
        transitions: Iterable[Transition],
        k: int,
        *,
        meta: dict | None = None,
        track_members: bool = False,
    ) -> RetrievalTable:
        counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        by_member: dict = defaultdict(Counter)
        n = 0
        for key, target, member in transitions:
            if len(key) != k:
                raise ValueError(f"transition key {key} has {len(key)} clusters; the table's K is {k}.")
            n += 1
            for level in _levels(tuple(key)):
                counts[level][target] += 1
                if track_members:
                    by_member[(level, member)][target] += 1
        table = cls(k, dict(counts), dict(meta or {}), dict(by_member))
        table.meta.update(transitions=n, keys=sum(len(lv) == k for lv in counts))
        return table

    @property
    def version(self) -> str:
        """sha256 of the rows (12 hex): the same counts give the same version, whoever built them."""
        h = hashlib.sha256(f"k={self.k}".encode())
        for key in sorted(self.counts):
            h.update(repr((key, sorted(self.counts[key].items()))).encode())
        return h.hexdigest()[:12]

    def lookup(self, key: Sequence[int], top: int, *, member: int | None = None) -> list[int]:
        """Up to `top` clusters not in `key`: the key's most frequent next clusters, then its suffixes', then
        overall. `member`: leave that member's own transitions out (training only; needs track_members)."""
        key = tuple(key)
        out: list[int] = []
        for level in _levels(key):
            c = self.counts.get(level)
            if not c:
                continue
            own = self.by_member.get((level, member)) if member is not None else None
            if own:
                c = c - own  # Counter subtraction keeps positive counts only
            for cid, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])):
                if cid not in key and cid not in out:
                    out.append(cid)
                    if len(out) >= top:
                        return out
        return out

    def to_dict(self, top: int) -> dict:
        """What a model's novelty.json records of the table it was trained with."""
        return {"version": self.version, "top": top, "k": self.k, **_provenance(self.meta)}

    # --- files --------------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        keys = sorted(self.counts, key=lambda x: (-len(x), x))
        ranked = [sorted(self.counts[key].items(), key=lambda kv: (-kv[1], kv[0])) for key in keys]
        return pa.table(
            {
                "history_key": [list(key) for key in keys],
                "next_clusters": [[c for c, _ in r] for r in ranked],
                "counts": [[n for _, n in r] for r in ranked],
            },
            schema=RETRIEVAL,
        )

    def write(self, folder: str | os.PathLike) -> Path:
        """retrieval.parquet and retrieval.json into `folder` (each replaced atomically)."""
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{TABLE_FILE}.tmp"
        pq.write_table(self.to_table(), tmp)
        tmp.replace(folder / TABLE_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "k": self.k,
            **_provenance(self.meta),
        }
        tmp = folder / f".{META_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(folder / META_FILE)
        return folder

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RetrievalTable:
        """A table folder (or a novelty model folder trained with --rag), or a ValueError naming the fix."""
        import pyarrow.parquet as pq

        folder = Path(folder)
        table_path, meta_path = folder / TABLE_FILE, folder / META_FILE
        if not table_path.is_file() or not meta_path.is_file():
            missing = [p.name for p in (table_path, meta_path) if not p.is_file()]
            raise ValueError(
                f"retrieval table {str(folder)!r}: no {' and no '.join(missing)}; not a retrieval table folder. "
                f"Build one with `{BUILD}`."
            )
        try:
            meta = json.loads(meta_path.read_text())
            version, k = meta["format_version"], int(meta["k"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{meta_path}: corrupt ({exc!r}); rebuild it (`{BUILD}`).") from exc
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format_version={version!r} is newer than this code reads (<= {FORMAT_VERSION}); "
                f"update the code or rebuild the table (`{BUILD}`)."
            )
        try:
            t = pq.read_table(table_path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{table_path}: unreadable ({exc}); rebuild it (`{BUILD}`).") from exc
        if not t.schema.equals(RETRIEVAL, check_metadata=False):
            raise ValueError(
                f"{table_path}: schema {t.schema.names} ({t.schema.types}) is not the retrieval table's "
                f"{RETRIEVAL.names}; rebuild it (`{BUILD}`)."
            )
        counts: dict[tuple[int, ...], Counter] = {}
        for key, clusters, ns in zip(*(t[c].to_pylist() for c in RETRIEVAL.names), strict=True):
            if len(key) > k or len(clusters) != len(ns):
                raise ValueError(
                    f"{table_path}: row for key {key} is malformed (K={k}); rebuild it (`{BUILD}`)."
                )
            counts[tuple(key)] = Counter(dict(zip(clusters, ns, strict=True)))
        table = cls(
            k, counts, {key: v for key, v in meta.items() if key not in ("format_version", "version", "k")}
        )
        if meta.get("version") != table.version:
            raise ValueError(
                f"{meta_path}: version {meta.get('version')!r} does not match the rows of {TABLE_FILE} "
                f"({table.version}): the files come from different builds. Rebuild it (`{BUILD}`)."
            )
        return table

    def check_for(self, *, k: int, catalog_signature: str, source: str) -> RetrievalTable:
        """self, if it was built for history keys of length k over the catalog's clusters; else a ValueError."""
        if self.k != k:
            raise ValueError(
                f"{source}: retrieval table has K={self.k}, the model reads K={k}. Rebuild it (`{BUILD}`)."
            )
        theirs = self.meta.get("catalog_signature")
        if theirs is not None and theirs != catalog_signature:
            raise ValueError(
                f"{source}: retrieval table was built on other clusters (catalog signature {theirs}) than the "
                f"model's ({catalog_signature}). Rebuild it on this catalog (`{BUILD}`)."
            )
        return self


def _provenance(meta: dict) -> dict:
    keep = ("catalog_signature", "sources", "since", "built_at", "transitions", "keys", "excluded_members")
    return {key: meta[key] for key in keep if key in meta}


def history_transitions(
    histories: pa.Table, k: int, *, since: int | None = None, exclude_members: Iterable[int] = ()
) -> list[Transition]:
    """(key, next novel cluster, member) at every step of every history, as explore.examples builds them;
    `since` (unix seconds) keeps transitions whose next cluster's run began at or after it."""
    excluded = set(exclude_members)
    out: list[Transition] = []
    members = histories["member_id"].to_pylist()
    for member, hist, times in zip(
        members, histories["clusters"].to_pylist(), histories["timestamps"].to_pylist(), strict=True
    ):
        if member in excluded:
            continue
        for t in range(k, len(hist)):
            key = tuple(hist[t - k : t])
            for j in range(t, len(hist)):
                if hist[j] not in key:
                    if since is None or (times and times[j] >= since):
                        out.append((key, hist[j], member))
                    break
    return out


def feedback_transitions(log: pa.Table, k: int, *, since: int | None = None) -> list[Transition]:
    """(key, cluster, member) for every logged impression of a cluster outside its history key that was
    clicked, liked or shared; `since` in unix seconds (the log's timestamps are milliseconds)."""
    out: list[Transition] = []
    cols = ("history_key", "cluster_id", "member_id", "timestamp", "click", "like", "share")
    for key, cid, member, ts, click, like, share in zip(*(log[c].to_pylist() for c in cols), strict=True):
        if key is None or len(key) != k or cid is None or cid in key or not (click or like or share):
            continue
        if since is not None and (ts is None or ts < since * 1000):
            continue
        out.append((tuple(key), cid, member))
    return out


def build_table(
    *,
    k: int,
    n_clusters: int,
    catalog_signature: str,
    histories: pa.Table | None = None,
    feedback: pa.Table | None = None,
    since: int | None = None,
    sources: Sequence[str] = (),
    exclude_members: Iterable[int] = (),
    track_members: bool = False,
) -> RetrievalTable:
    """The table of histories' and feedback logs' transitions (either or both); unknown cluster ids are an
    error naming the source."""
    transitions: list[Transition] = []
    if histories is not None:
        transitions += history_transitions(histories, k, since=since, exclude_members=exclude_members)
    if feedback is not None:
        transitions += feedback_transitions(feedback, k, since=since)
    bad = next(((key, c) for key, c, _ in transitions if not 0 <= c < n_clusters or any(
        not 0 <= x < n_clusters for x in key)), None)  # fmt: skip
    if bad is not None:
        raise ValueError(
            f"retrieval sources {list(sources)}: transition {bad[0]} -> {bad[1]} names a cluster outside the "
            f"catalog (0..{n_clusters - 1}); build the table from logs of this catalog."
        )
    meta = {
        "catalog_signature": catalog_signature,
        "sources": list(sources),
        "since": since,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    excluded = sorted(set(exclude_members))
    if excluded:
        meta["excluded_members"] = len(excluded)
    return RetrievalTable.from_transitions(transitions, k, meta=meta, track_members=track_members)
