"""The history keys a bulk run samples for: observed keys, all M^K tuples, or one key per member.

Every set is a table of `history_key` (list<int32>, K ids) and `member_id` (int64, null for shared
keys). Keys from a user's file are checked row by row: a row with the wrong length or an unknown
cluster id is quarantined (kept in a separate table with the reason) and counted, never dropped silently.
"""

from __future__ import annotations

import itertools
from pathlib import Path

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


def load_keys(
    which: str,
    histories: pa.Table,
    k: int,
    n_clusters: int,
    *,
    limit: int | None = None,
    per_member: bool = True,
) -> tuple[pa.Table, pa.Table]:
    """(keys, quarantined) for a bulk run: a key set by name (KEY_SETS) or a parquet file of keys.

    A file's rows are checked (check_key_rows): bad ones land in `quarantined`, with the reason. With
    `per_member` false (a cache is per key, not per member) the set `members` is refused and repeated
    keys are sampled once. `limit` keeps the first N keys (smoke runs). The flag named in errors is --keys.
    """
    import pyarrow.parquet as pq

    if which == "members" and not per_member:
        raise ValueError("--keys members: the cache is per history key; use observed, all, or a key file.")
    if which in KEY_SETS:
        keys, quarantined = build_key_set(histories, k, n_clusters, which), KEY_QUARANTINE.empty_table()
    else:
        path = Path(which)
        if not path.is_file():
            raise FileNotFoundError(f"--keys {which}: not one of {'/'.join(KEY_SETS)} and not a file.")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"--keys {which}: not a readable parquet file ({exc}).") from exc
        keys, quarantined = check_key_rows(table, k, n_clusters, source=str(path))
    if limit:
        keys = keys.slice(0, limit)
    if not per_member:
        keys = key_table(sorted({tuple(x) for x in keys["history_key"].to_pylist()}))
    if keys.num_rows == 0:
        raise ValueError(f"--keys {which}: no valid history keys ({quarantined.num_rows} quarantined).")
    return keys, quarantined
