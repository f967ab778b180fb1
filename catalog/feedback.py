"""Feedback logs, checked: the one set of rules every consumer (alignment aggregation, ranker training)
applies before it uses a row, with the same quarantine table and the same counts.

A row that breaks a rule is set aside whole in a FEEDBACK_QUARANTINE table, with the first rule it
breaks as `reason` and the part file it came from as `part`; the other rows are used. The rules, in the
order they are checked (the reason each gives):

    the part lacks a column, or a column cannot be cast    missing column X | column X is T, expected U
      (every row of that part)
    click, like, share, skip given as numbers other than   click is not 0 or 1   (checked on the raw
      0 and 1 (2 or -1 is not "true")                        column, before any cast to bool)
    a null in any FEEDBACK_LOG column                       null X
    source outside SOURCES                                  source not one of ('explore', 'exploit')
    history_key not K clusters long                         history_key does not hold K=2 clusters
    history_key holding an id outside the catalog           history_key holds an unknown cluster id ...
    cluster_id outside the catalog                          unknown cluster_id
    dwell_s NaN, infinite or negative                       dwell_s is NaN | dwell_s is infinite | negative dwell_s
    position, member_id or item_id negative                 negative position | negative member_id | ...
    item_id / member_id not in the catalog (when the        item_id not in the catalog | member_id ...
      rules carry the catalog's ids: ranker training)

A part that cannot be read at all (corrupt or truncated parquet) becomes one quarantine row of its own
(every log column null, reason "unreadable part: <error>", `part` its path) and is counted in
`quarantined_parts`, not in the row counts; the other parts proceed. With strict=True such a part is a
ValueError instead, saying what to do (a log part cannot be rebuilt).

Counts (`stats`), the same keys for every consumer: parts, quarantined_parts, events (rows read from the
readable parts), kept, quarantined (rows set aside), quarantine_reasons (reason -> rows, most first).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog.io import SchemaMismatchError
from catalog.logs import UNREADABLE_PART_FIX, log_parts
from catalog.schemas import FEEDBACK_LOG, FEEDBACK_QUARANTINE, SOURCES

ACTIONS = ("click", "like", "share", "skip")  # booleans: 0/1 numbers are accepted, nothing else
NON_NEGATIVE = ("position", "member_id", "item_id")
UNREADABLE = "unreadable part"  # prefix of the reason of a whole unreadable part


@dataclass(frozen=True, eq=False)
class FeedbackRules:
    """What a usable feedback-log row satisfies, from the catalog it is checked against.

    Args:
        k: the history key length K.
        n_clusters: cluster ids are 0..n_clusters-1.
        item_ids, member_ids: the catalog's ids; None leaves them unchecked (aggregation needs no item
            or member features; ranker training joins them, so it passes both).
    """

    k: int
    n_clusters: int
    item_ids: np.ndarray | None = None
    member_ids: np.ndarray | None = None

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"FeedbackRules.k={self.k}: the history key length must be >= 1.")
        if self.n_clusters < 1:
            raise ValueError(f"FeedbackRules.n_clusters={self.n_clusters}: the catalog must have clusters.")
        for name in ("item_ids", "member_ids"):
            ids = getattr(self, name)
            if ids is not None:
                object.__setattr__(self, name, np.unique(np.asarray(ids, dtype=np.int64)))

    @classmethod
    def for_catalog(cls, catalog, *, ids: bool = False) -> FeedbackRules:
        """The rules of a catalog.build.Catalog; ids=True also checks item and member ids against it."""
        if not ids:
            return cls(catalog.history_k, catalog.n_clusters)
        return cls(
            catalog.history_k,
            catalog.n_clusters,
            item_ids=catalog.items["item_id"].to_numpy(),
            member_ids=catalog.members["member_id"].to_numpy(),
        )


@dataclass
class CheckedFeedback:
    good: pa.Table  # FEEDBACK_LOG rows that passed every rule
    quarantine: pa.Table  # FEEDBACK_QUARANTINE: rows set aside, plus one row per unreadable part
    stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# one table


def _mask(x) -> np.ndarray:
    """A boolean arrow result as numpy; null counts as true (the caller flags nulls first)."""
    return np.asarray(pc.fill_null(x, True).to_numpy(zero_copy_only=False), dtype=bool)


def _columns(raw: pa.Table) -> tuple[dict[str, pa.ChunkedArray], list[str], list[tuple[np.ndarray, str]]]:
    """Every FEEDBACK_LOG column cast where possible, the problems that quarantine the whole table (a
    column missing or uncastable: it becomes nulls), and per-row flags found on the raw columns
    (an action given as a number other than 0 or 1: nulled, so a bad value never reads as true)."""
    n, cols, problems, flags = raw.num_rows, {}, [], []
    for f in FEEDBACK_LOG:
        if f.name not in raw.column_names:
            problems.append(f"missing column {f.name}")
            cols[f.name] = pa.chunked_array([pa.nulls(n, f.type)])
            continue
        col = raw[f.name]
        if f.name in ACTIONS and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            bad = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, pa.array([0, 1], col.type))))
            flags.append((_mask(bad), f"{f.name} is not 0 or 1"))
            col = pc.if_else(bad, pa.scalar(None, col.type), col)
        col = _null_out_of_range(col, f, flags)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                problems.append(f"column {f.name} is {col.type}, expected {f.type}")
                col = pa.chunked_array([pa.nulls(n, f.type)])
        cols[f.name] = col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])
    return cols, problems, flags


def _null_out_of_range(col, f: pa.Field, flags: list) -> pa.ChunkedArray:
    """An integer column (or list of integers) wider than the schema's integer type, with the rows holding a
    value out of its range flagged and nulled: the cast that follows would otherwise fail for the whole
    part because of one row."""
    target, values = f.type, col.type
    is_list = pa.types.is_list(target) and pa.types.is_list(values)
    if is_list:
        target, values = target.value_type, values.value_type
    if not (pa.types.is_integer(target) and pa.types.is_integer(values)) or target == values:
        return col
    info = np.iinfo(target.to_pandas_dtype())
    flat = pc.list_flatten(col) if is_list else col
    out = pc.or_(pc.less(flat, info.min), pc.greater(flat, info.max))
    out = np.asarray(pc.fill_null(out, False).to_numpy(zero_copy_only=False), dtype=bool)
    if not out.any():
        return col
    if is_list:
        rows = np.zeros(len(col), bool)
        rows[pc.list_parent_indices(col).to_numpy(zero_copy_only=False)[out]] = True
    else:
        rows = out
    flags.append((rows, f"{f.name} holds a value outside {target}"))
    keep = pa.array(~rows)
    return pc.if_else(keep, col, pa.scalar(None, col.type))


def _unknown(ids: pa.ChunkedArray, known: np.ndarray) -> np.ndarray:
    return ~_mask(pc.is_in(ids, pa.array(known)))


def check_feedback(raw: pa.Table, rules: FeedbackRules, part: str = "<table>") -> tuple[pa.Table, pa.Table]:
    """(good rows as FEEDBACK_LOG, rows set aside as FEEDBACK_QUARANTINE) of one log table `raw`, read
    without any schema (the rules do the checking); `part` names where it came from."""
    cols, problems, raw_flags = _columns(raw)
    n = raw.num_rows
    reasons = np.full(n, None, dtype=object)

    def flag(mask: np.ndarray, reason: str) -> None:
        sel = mask & (reasons == None)  # noqa: E711  (elementwise on an object array)
        reasons[sel] = reason

    if problems:
        flag(np.ones(n, bool), "; ".join(problems))
    for mask, reason in raw_flags:
        flag(mask, reason)
    for f in FEEDBACK_LOG:
        flag(_mask(pc.is_null(cols[f.name])), f"null {f.name}")
    flag(~_mask(pc.is_in(cols["source"], pa.array(SOURCES))), f"source not one of {SOURCES}")
    key = cols["history_key"]
    lengths = pc.fill_null(pc.list_value_length(key), 0).to_numpy(zero_copy_only=False)
    flag(lengths != rules.k, f"history_key does not hold K={rules.k} clusters")
    flat = pc.list_flatten(key)
    parents = pc.list_parent_indices(key).to_numpy(zero_copy_only=False)
    bad_flat = _mask(pc.or_(pc.less(flat, 0), pc.greater_equal(flat, rules.n_clusters)))
    bad_key = np.zeros(n, bool)
    bad_key[parents[bad_flat]] = True
    flag(bad_key, f"history_key holds an unknown cluster id (catalog has 0..{rules.n_clusters - 1})")
    cid = cols["cluster_id"]
    flag(_mask(pc.or_(pc.less(cid, 0), pc.greater_equal(cid, rules.n_clusters))), "unknown cluster_id")
    dwell = cols["dwell_s"]
    flag(_mask(pc.is_nan(dwell)), "dwell_s is NaN")
    flag(_mask(pc.is_inf(dwell)), "dwell_s is infinite")
    flag(_mask(pc.less(dwell, 0)), "negative dwell_s")
    for name in NON_NEGATIVE:
        flag(_mask(pc.less(cols[name], 0)), f"negative {name}")
    if rules.item_ids is not None:
        flag(_unknown(cols["item_id"], rules.item_ids), "item_id not in the catalog")
    if rules.member_ids is not None:
        flag(_unknown(cols["member_id"], rules.member_ids), "member_id not in the catalog")

    bad = reasons != None  # noqa: E711
    table = pa.table(cols)
    good = table.filter(pa.array(~bad)).cast(FEEDBACK_LOG)
    quarantined = table.filter(pa.array(bad))
    quarantined = quarantined.append_column("reason", pa.array(reasons[bad].tolist(), pa.string()))
    quarantined = quarantined.append_column("part", pa.array([part] * int(bad.sum()), pa.string()))
    return good, quarantined.cast(FEEDBACK_QUARANTINE)


# ------------------------------------------------------------------------------------------
# parts and whole logs


def log_files(logs: list[str | os.PathLike]) -> list[str]:
    """The part files of feedback-log folders (or the part files themselves), in order."""
    files: list[str] = []
    for entry in logs:
        path = Path(entry)
        if path.is_file():
            files.append(str(path))
        else:
            files.extend(str(p) for p in log_parts(path))  # FileNotFoundError names a missing folder
    if not files:
        raise ValueError(f"logs={[str(x) for x in logs]}: no feedback log parts (part-*.parquet) found.")
    return files


def unreadable_part_error(path: str, problem: str) -> SchemaMismatchError:
    """The error of an unreadable part in strict mode: what happened and what to do."""
    return SchemaMismatchError(
        path,
        None,
        f"feedback log part is not a readable parquet file ({problem})",
        f"{UNREADABLE_PART_FIX}; or run without --strict-logs (config strict_logs=false) to quarantine "
        "the part as a whole and use the rest of the log.",
    )


def unreadable_row(path: str, problem: str) -> pa.Table:
    """The one quarantine row that stands for a part that could not be read."""
    row = {f.name: [None] for f in FEEDBACK_LOG}
    return pa.table(
        {**row, "reason": [f"{UNREADABLE}: {problem}"], "part": [path]}, schema=FEEDBACK_QUARANTINE
    )


def _problem(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class PartCheck:
    good: pa.Table  # FEEDBACK_LOG
    quarantine: pa.Table  # FEEDBACK_QUARANTINE
    rows: int  # rows read (0 for an unreadable part)
    unreadable: bool


def read_part(path: str, rules: FeedbackRules, *, strict: bool = False) -> PartCheck:
    """One log part, checked. An unreadable part is one quarantine row (strict: a ValueError)."""
    try:
        raw = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        if strict:
            raise unreadable_part_error(path, _problem(exc)) from exc
        return PartCheck(FEEDBACK_LOG.empty_table(), unreadable_row(path, _problem(exc)), 0, True)
    good, quarantined = check_feedback(raw, rules, path)
    return PartCheck(good, quarantined, raw.num_rows, False)


def is_unreadable(quarantine: pa.Table) -> np.ndarray:
    """Which quarantine rows stand for a whole unreadable part."""
    marks = pc.fill_null(pc.starts_with(quarantine["reason"], f"{UNREADABLE}: "), False)
    return np.asarray(marks.to_numpy(zero_copy_only=False), dtype=bool)


def raise_if_unreadable(quarantine: pa.Table) -> None:
    """Strict mode after a distributed read: the first unreadable part as the strict error."""
    marks = is_unreadable(quarantine)
    if marks.any():
        row = quarantine.filter(pa.array(marks)).sort_by([("part", "ascending")]).slice(0, 1).to_pylist()[0]
        raise unreadable_part_error(row["part"], row["reason"][len(UNREADABLE) + 2 :])


def quarantine_stats(quarantine: pa.Table, *, parts: int, events: int) -> dict:
    """The counts every consumer reports, from its quarantine table."""
    marks = is_unreadable(quarantine)
    rows = quarantine.filter(pa.array(~marks))
    return {
        "parts": parts,
        "quarantined_parts": int(marks.sum()),
        "events": events,
        "kept": events - rows.num_rows,
        "quarantined": rows.num_rows,
        "quarantine_reasons": dict(Counter(rows["reason"].to_pylist()).most_common()),
    }


def read_feedback(
    logs: list[str | os.PathLike], rules: FeedbackRules, *, strict: bool = False
) -> CheckedFeedback:
    """Every part of feedback-log folders (or part files), read part by part and checked."""
    files = log_files(logs)
    checks = [read_part(f, rules, strict=strict) for f in files]
    good = pa.concat_tables([c.good for c in checks])
    quarantine = pa.concat_tables([c.quarantine for c in checks])
    stats = quarantine_stats(quarantine, parts=len(files), events=sum(c.rows for c in checks))
    return CheckedFeedback(good, quarantine, stats)


def feedback_summary_line(stats: dict) -> str:
    """'feedback: 1200 events in 3 parts; 4 quarantined {...}; 1 unreadable part quarantined'."""
    line = f"feedback: {stats['events']} events in {stats['parts']} parts; {stats['quarantined']} quarantined"
    if stats["quarantined"]:
        line += f" {stats['quarantine_reasons']}"
    if stats["quarantined_parts"]:
        line += f"; {stats['quarantined_parts']} unreadable part(s) quarantined whole"
    return line
