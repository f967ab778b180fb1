"""The history keys a bulk run samples for: observed keys, all M^K tuples, or one key per member.

Every set is a table of `history_key` (list<int32>, K ids) and `member_id` (int64, null for shared
keys). Keys from a user's file are checked row by row: a row with the wrong length or an unknown
cluster id is quarantined (kept in a separate table with the reason) and counted, never dropped silently.
"""

from __future__ import annotations

import itertools

import pyarrow as pa

from catalog.histories import history_keys
from catalog.schemas import KEY_QUARANTINE, KEYS

KEY_SETS = ("observed", "all", "members")


def key_table(keys: list[tuple[int, ...]], members: list[int | None] | None = None) -> pa.Table:
    members = members if members is not None else [None] * len(keys)
    return pa.table({"history_key": [list(k) for k in keys], "member_id": members}, schema=KEYS)


def build_key_set(histories: pa.Table, k: int, n_clusters: int, which: str = "observed") -> pa.Table:
    """observed: the distinct last-K keys of members' histories (sorted); all: every M^K tuple;
    members: each member's own key (members with histories shorter than K have none)."""
    if which == "observed":
        keys = sorted({tuple(x) for x in history_keys(histories, k)["history_key"].to_pylist()})
        return key_table(keys)
    if which == "all":
        if n_clusters**k > 10_000_000:
            raise ValueError(
                f"keys='all': M^K = {n_clusters}^{k} keys is too many; use 'observed' or 'members'."
            )
        return key_table(list(itertools.product(range(n_clusters), repeat=k)))
    if which == "members":
        t = history_keys(histories, k)
        return key_table([tuple(x) for x in t["history_key"].to_pylist()], t["member_id"].to_pylist())
    raise ValueError(f"keys={which!r}: use one of {KEY_SETS}, or a parquet file with a history_key column.")


def check_key_rows(table: pa.Table, k: int, n_clusters: int, *, source: str) -> tuple[pa.Table, pa.Table]:
    """(good, quarantined) rows of a user's key table; quarantined rows carry a `reason` column."""
    if "history_key" not in table.column_names:
        raise ValueError(
            f"{source}: no 'history_key' column (present: {table.column_names}). "
            "Give a list<int> column of K cluster ids per row."
        )
    key_type = table.schema.field("history_key").type
    if not (pa.types.is_list(key_type) or pa.types.is_large_list(key_type)) or not pa.types.is_integer(
        key_type.value_type
    ):
        raise ValueError(
            f"{source}: column 'history_key' is {key_type}; it must be a list of integer cluster ids "
            "(list<int32>), K per row."
        )
    if "member_id" in table.column_names and not pa.types.is_integer(table.schema.field("member_id").type):
        raise ValueError(
            f"{source}: column 'member_id' is {table.schema.field('member_id').type}; it must be an integer id (int64)."
        )
    keys = table["history_key"].to_pylist()
    members = table["member_id"].to_pylist() if "member_id" in table.column_names else [None] * len(keys)
    good, bad = ([], []), ([], [], [])
    for key, member in zip(keys, members, strict=True):
        if key is None or len(key) != k:
            reason = f"has {0 if key is None else len(key)} clusters, K={k}"
        elif any(c is None or not 0 <= c < n_clusters for c in key):
            reason = f"unknown cluster id (catalog has 0..{n_clusters - 1})"
        else:
            good[0].append(tuple(key))
            good[1].append(member)
            continue
        bad[0].append(key)
        bad[1].append(member)
        bad[2].append(reason)
    quarantined = pa.table(
        {"history_key": bad[0], "member_id": bad[1], "reason": bad[2]}, schema=KEY_QUARANTINE
    )
    return key_table(good[0], good[1]), quarantined
