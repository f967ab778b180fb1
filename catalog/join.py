"""Join the endpoint's impression log with the engagement events clients reported: FEEDBACK_LOG rows.

    feedback, quarantine, stats = join_feedback(impressions, events, late_s=86_400)

Every impression becomes one FEEDBACK_LOG row: with no event it is a non-engagement (every flag false,
dwell 0). An item's events are merged (a client may report the click first and the like later): the flags
are OR-ed and the dwell is the longest reported. What cannot be joined is set aside with the reason, never
dropped silently, in EVENT_QUARANTINE rows:

    no impression      the (request_id, item_id) was never served (a wrong id, or a log part lost)
    duplicate          the same event again for the same impression (a client's retry)
    late               received more than `late_s` after the impression was served
    duplicate impression   (impressions) the same (request_id, item_id) served twice: the first is kept

The function is pure pyarrow and deterministic: its output does not depend on the order of the input
rows, so the same join run per bucket of request ids (jobs.join_feedback on Ray) gives the same rows.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from catalog.io import conform
from catalog.schemas import ENGAGEMENT_EVENTS, EVENT_QUARANTINE, FEEDBACK_LOG, IMPRESSION_LOG

FLAGS = ("click", "like", "share", "skip")
REASONS = ("no impression", "duplicate", "late", "duplicate impression")
_KEY = ["request_id", "item_id"]


def _first_rows(table: pa.Table, keys: list[str], order: list[tuple[str, str]]) -> tuple[pa.Table, pa.Table]:
    """(first row of each `keys` group by `order`, the other rows), both in that order."""
    if table.num_rows == 0:
        return table, table
    table = table.sort_by(order)
    idx = pa.array(range(table.num_rows), pa.int64())
    first = (
        table.select(keys)
        .append_column("_i", idx)
        .group_by(keys, use_threads=False)
        .aggregate([("_i", "min")])
    )
    keep = pc.is_in(idx, value_set=first["_i_min"])
    return table.filter(keep), table.filter(pc.invert(keep))


def _quarantine(events: pa.Table, reason: str) -> pa.Table:
    reasons = pa.array([reason] * events.num_rows, pa.string())
    return conform(events.append_column("reason", reasons), EVENT_QUARANTINE, source="join")


def join_feedback(
    impressions: pa.Table, events: pa.Table, *, late_s: float = 86_400.0
) -> tuple[pa.Table, pa.Table, dict]:
    """(FEEDBACK_LOG rows, EVENT_QUARANTINE rows, counts) of an impression log and an events log."""
    if late_s < 0:
        raise ValueError(f"late_s={late_s}: the late-event window must be >= 0 seconds.")
    impressions = conform(impressions, IMPRESSION_LOG, source="impression log")
    events = conform(events, ENGAGEMENT_EVENTS, source="events log")
    impressions, dup_impressions = _first_rows(
        impressions, _KEY, [(k, "ascending") for k in [*_KEY, "timestamp"]]
    )

    served = impressions.select([*_KEY, "timestamp"])
    joined = events.join(served, keys=_KEY, join_type="left outer", use_threads=False)
    unmatched = pc.is_null(joined["timestamp"])
    late = pc.and_(
        pc.invert(unmatched),
        pc.greater(pc.subtract(joined["received_ms"], joined["timestamp"]), late_s * 1000),
    )
    quarantined = [
        _quarantine(joined.filter(unmatched).select(events.column_names), "no impression"),
        _quarantine(joined.filter(pc.fill_null(late, False)).select(events.column_names), "late"),
    ]
    ok = joined.filter(pc.and_(pc.invert(unmatched), pc.invert(pc.fill_null(late, False)))).select(
        events.column_names
    )
    order = [(c, "ascending") for c in [*_KEY, "received_ms", *FLAGS, "dwell_s"]]
    ok, repeats = _first_rows(ok, [*_KEY, *FLAGS, "dwell_s"], order)
    quarantined.append(_quarantine(repeats, "duplicate"))

    merged = ok.group_by(_KEY, use_threads=False).aggregate(
        [(f, "any") for f in FLAGS] + [("dwell_s", "max")]
    )
    renamed = {**{f"{f}_any": f for f in FLAGS}, "dwell_s_max": "dwell_s"}
    merged = merged.rename_columns([renamed.get(c, c) for c in merged.column_names])
    # the join carries no list column (Acero's hash join does not): match on a row index, then take
    impressions = impressions.sort_by(
        [("timestamp", "ascending"), ("request_id", "ascending"), ("position", "ascending")]
    )
    index = impressions.select(_KEY).append_column("_i", pa.array(range(impressions.num_rows), pa.int64()))
    found = index.join(merged, keys=_KEY, join_type="left outer", use_threads=False).sort_by("_i")
    filled = {f: pc.fill_null(found[f], False) for f in FLAGS}
    filled["dwell_s"] = pc.fill_null(found["dwell_s"], 0.0).cast(pa.float32())
    feedback = pa.table(
        {name: filled[name] if name in filled else impressions[name] for name in FEEDBACK_LOG.names}
    )
    feedback = conform(feedback, FEEDBACK_LOG, source="join")

    dup_imp = dup_impressions.select(_KEY).append_column(
        "received_ms", dup_impressions["timestamp"]
    )  # kept as an event-shaped row: which impression, when
    for f in FLAGS:
        dup_imp = dup_imp.append_column(f, pa.nulls(dup_imp.num_rows, pa.bool_()))
    dup_imp = dup_imp.append_column("dwell_s", pa.nulls(dup_imp.num_rows, pa.float32()))
    quarantined.append(_quarantine(dup_imp, "duplicate impression"))
    quarantine = pa.concat_tables(quarantined).sort_by(
        [
            ("reason", "ascending"),
            ("request_id", "ascending"),
            ("item_id", "ascending"),
            ("received_ms", "ascending"),
        ]
    )
    reasons = quarantine["reason"].to_pylist()
    stats = {
        "impressions": impressions.num_rows,
        "events": events.num_rows,
        "engaged_impressions": merged.num_rows,
        "feedback_rows": feedback.num_rows,
        "quarantined": {r: reasons.count(r) for r in REASONS},
    }
    return feedback, quarantine, stats
