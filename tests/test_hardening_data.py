"""No lost data, one clear error for every bad input (issue 13): durable writes (fsync of the file and
its folder), leftover temporary log parts, one validation of feedback logs shared by alignment and ranker
training (the same rules, reasons, quarantine and counts), unreadable parts quarantined whole."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignment.aggregate import AggregationConfig, aggregate_logs
from catalog.io import ParquetStreamWriter, SchemaMismatchError, copy_file, write_json, write_table
from catalog.logs import FeedbackLogWriter, read_feedback_log
from catalog.schemas import FEEDBACK_LOG, FEEDBACK_QUARANTINE

M, K = 6, 2
ITEMS = np.arange(100, 100 + M)  # item 100 + c is in cluster c
MEMBERS = np.arange(0, 50)


def events(n: int, *, start: int = 0) -> pa.Table:
    """n clean FEEDBACK_LOG rows: key (0, 1), cluster 2 (item 102), explore; every third one clicked."""
    rows = [
        {
            "request_id": f"r{start + i}",
            "member_id": start + i,
            "timestamp": 1000 + start + i,
            "history_key": [0, 1],
            "item_id": 102,
            "cluster_id": 2,
            "source": "explore",
            "position": i % 3,
            "content_type": "movie",
            "click": i % 3 == 0,
            "like": False,
            "share": False,
            "skip": i % 3 == 2,
            "dwell_s": 30.0 if i % 3 == 0 else 0.0,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=FEEDBACK_LOG)


def set_column(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    """`table` with column `name` replaced by `values` (of `type_`, default the column's own type)."""
    i = table.schema.get_field_index(name)
    arr = pa.array(values, type_ or table.schema.field(name).type)
    return table.set_column(i, pa.field(name, arr.type), arr)


def bad_rows() -> tuple[pa.Table, list[str]]:
    """One row per rule, as a producer that skipped the schema writes them (actions as int64), and the
    reason each must get. Rows 0 and 1 are clean."""
    t = events(14)
    actions = {a: [int(v) for v in t[a].to_pylist()] for a in ("click", "like", "share", "skip")}
    actions["click"][2] = 2  # not "true"
    actions["like"][3] = -1
    actions["share"][4] = 2
    actions["skip"][5] = 3
    for a, v in actions.items():
        t = set_column(t, a, v, pa.int64())
    dwell = t["dwell_s"].to_pylist()
    dwell[6], dwell[7], dwell[8] = float("inf"), float("nan"), -1.0
    t = set_column(t, "dwell_s", dwell, pa.float64())
    position = t["position"].to_pylist()
    position[9] = -1
    t = set_column(t, "position", position)
    member = t["member_id"].to_pylist()
    member[10] = -4
    t = set_column(t, "member_id", member)
    keys = t["history_key"].to_pylist()
    keys[11] = [0, 1, 2]
    keys[12] = [0, 9]
    t = set_column(t, "history_key", keys)
    cluster = t["cluster_id"].to_pylist()
    cluster[13] = 99
    t = set_column(t, "cluster_id", cluster)
    reasons = [
        None,
        None,
        "click is not 0 or 1",
        "like is not 0 or 1",
        "share is not 0 or 1",
        "skip is not 0 or 1",
        "dwell_s is infinite",
        "dwell_s is NaN",
        "negative dwell_s",
        "negative position",
        "negative member_id",
        f"history_key does not hold K={K} clusters",
        f"history_key holds an unknown cluster id (catalog has 0..{M - 1})",
        "unknown cluster_id",
    ]
    return t, reasons


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables, a NaN dwell equal to a NaN dwell."""
    return a.drop_columns(["dwell_s"]).equals(b.drop_columns(["dwell_s"])) and np.array_equal(
        a["dwell_s"].to_numpy(), b["dwell_s"].to_numpy(), equal_nan=True
    )


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------
# the rules


def test_non_binary_actions_infinite_dwell_and_negative_positions_are_quarantined():
    from catalog.feedback import FeedbackRules, check_feedback

    raw, reasons = bad_rows()
    good, q = check_feedback(raw, FeedbackRules(K, M), "p")
    assert good.num_rows == 2 and good.schema.equals(FEEDBACK_LOG)
    assert q.schema.equals(FEEDBACK_QUARANTINE)
    assert q["reason"].to_pylist() == [r for r in reasons if r]
    # a click of 2 is never read as true: the quarantined row holds no value, not `true`
    assert q["click"].to_pylist()[0] is None and set(q["part"].to_pylist()) == {"p"}


def test_alignment_quarantines_infinite_dwell_and_non_binary_actions(tmp_path):
    log = tmp_path / "log"
    FeedbackLogWriter(log).append(events(12))
    (before,) = aggregate_logs([log], K, M, AggregationConfig(min_impressions=1)).pairs.to_pylist()
    raw, reasons = bad_rows()
    pq.write_table(raw, log / "part-000001.parquet")  # a producer that skipped the schema checks
    agg = aggregate_logs([log], K, M, AggregationConfig(min_impressions=1))
    assert agg.stats["quarantined"] == 12 and agg.stats["events"] == 12 + 14
    assert agg.quarantine["reason"].to_pylist() == [r for r in reasons if r]
    # only the two clean rows of the bad part count: no click of 2 read as a click, no infinite dwell
    # read as a long one
    (after,) = agg.pairs.to_pylist()
    assert after["impressions"] == before["impressions"] + 2
    assert (after["clicks"], after["skips"], after["dwell_clicks"]) == (
        before["clicks"] + 1,
        before["skips"],
        0,
    )


def test_ranker_training_and_alignment_share_the_rules_reasons_and_counts(tmp_path):
    from catalog.feedback import FeedbackRules, read_feedback
    from jobs.train_ranker import TrainJobConfig, read_feedback_logs

    log = tmp_path / "log"
    FeedbackLogWriter(log).append(events(12))
    raw, _ = bad_rows()
    pq.write_table(raw, log / "part-000001.parquet")
    extra = set_column(events(2, start=20), "item_id", [102, 555])  # 555: not in the catalog
    FeedbackLogWriter(log).append(extra)
    catalog = SimpleNamespace(
        history_k=K,
        n_clusters=M,
        items=pa.table({"item_id": ITEMS}),
        members=pa.table({"member_id": MEMBERS}),
    )
    cfg = TrainJobConfig(dataset="feedback", logs=[str(log)])
    ranking = read_feedback_logs(cfg, catalog)
    alignment = aggregate_logs([log], K, M, AggregationConfig())
    shared = read_feedback([log], FeedbackRules(K, M))
    # alignment reports exactly what the shared reader counts without the catalog's ids
    for key in ("parts", "quarantined_parts", "events", "quarantined", "quarantine_reasons"):
        assert alignment.stats[key] == shared.stats[key], key
    assert same_rows(alignment.quarantine, shared.quarantine)
    # ranker training: the same rows and reasons, plus the item the catalog does not know
    assert ranking.stats["quarantine_reasons"] == {
        **alignment.stats["quarantine_reasons"],
        "item_id not in the catalog": 1,
    }
    assert same_rows(ranking.quarantine.slice(0, alignment.quarantine.num_rows), alignment.quarantine)
    assert ranking.good.num_rows == 12 + 2 + 1 == ranking.stats["kept"]
    assert ranking.stats["quarantined"] == 13 and ranking.stats["events"] == 12 + 14 + 2


# ------------------------------------------------------------------------------------------
# unreadable parts


@pytest.fixture
def log_with_a_truncated_part(tmp_path):
    log = tmp_path / "log"
    w = FeedbackLogWriter(log)
    w.append(events(9))
    bad = w.append(events(9, start=9))
    w.append(events(6, start=18))
    truncate(bad)
    return log, bad


def test_an_unreadable_part_is_quarantined_whole_and_counted(log_with_a_truncated_part):
    log, bad = log_with_a_truncated_part
    agg = aggregate_logs([log], K, M, AggregationConfig(min_impressions=1))
    assert agg.stats["parts"] == 3 and agg.stats["quarantined_parts"] == 1
    assert agg.stats["events"] == 15 and agg.stats["quarantined"] == 0
    (row,) = agg.quarantine.to_pylist()
    assert row["part"] == str(bad) and row["reason"].startswith("unreadable part: ")
    assert all(row[f.name] is None for f in FEEDBACK_LOG)  # nothing of the part could be read
    assert agg.pairs["impressions"].to_pylist() == [15]  # the rest is aggregated


def test_strict_logs_make_an_unreadable_part_an_error_that_says_what_to_do(log_with_a_truncated_part):
    log, bad = log_with_a_truncated_part
    with pytest.raises(ValueError, match="cannot be rebuilt") as err:
        aggregate_logs([log], K, M, AggregationConfig(strict_logs=True))
    text = str(err.value)
    assert str(bad) in text and "move it out of the log folder" in text and "rebuild it" not in text
    from catalog.feedback import FeedbackRules, read_feedback

    with pytest.raises(SchemaMismatchError, match="cannot be rebuilt"):
        read_feedback([log], FeedbackRules(K, M), strict=True)


def test_the_strict_log_reader_says_what_to_do_with_a_truncated_part(log_with_a_truncated_part):
    log, bad = log_with_a_truncated_part
    with pytest.raises(SchemaMismatchError) as err:
        read_feedback_log(log)
    text = str(err.value)
    assert str(bad) in text and "cannot be rebuilt" in text and "rebuild it" not in text


def test_the_alignment_job_has_a_strict_logs_flag(log_with_a_truncated_part, tmp_path):
    from jobs.train_alignment import AlignmentTrainConfig, aggregation_config

    log, _ = log_with_a_truncated_part
    cfg = AlignmentTrainConfig(catalog=str(tmp_path), logs=[str(log)], strict_logs=True)
    assert aggregation_config(cfg).strict_logs and not AggregationConfig().strict_logs
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train_alignment", "--help"], capture_output=True, text=True, check=True
    )
    assert "--strict-logs" in proc.stdout


@pytest.mark.slow
def test_the_ray_engine_quarantines_the_same_rows_and_parts(log_with_a_truncated_part, ray_local):
    log, _ = log_with_a_truncated_part
    raw, _ = bad_rows()
    pq.write_table(raw, log / "part-000003.parquet")
    a = aggregate_logs([log], K, M, AggregationConfig(engine="pyarrow"))
    b = aggregate_logs([log], K, M, AggregationConfig(engine="ray"))
    for key in ("parts", "quarantined_parts", "events", "quarantined", "quarantine_reasons"):
        assert a.stats[key] == b.stats[key], key
    assert a.pairs.equals(b.pairs) and a.stats["quarantined_parts"] == 1
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        aggregate_logs([log], K, M, AggregationConfig(engine="ray", strict_logs=True))


# ------------------------------------------------------------------------------------------
# durable writes and leftover temporary parts


@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync as (kind, path): 'dir' or 'file', the path the descriptor names."""
    calls: list[tuple[str, str]] = []
    real = os.fsync

    def record(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


def _synced(calls, dest: Path) -> None:
    """The temporary file of `dest` was flushed, then `dest`'s folder (after the rename)."""
    files = [i for i, (kind, p) in enumerate(calls) if kind == "file" and Path(p).parent == dest.parent]
    dirs = [i for i, (kind, p) in enumerate(calls) if kind == "dir" and Path(p) == dest.parent.resolve()]
    assert files and dirs and files[0] < dirs[-1], calls
    assert Path(calls[files[0]][1]).name != dest.name  # the temporary name, before the rename


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor")
def test_writers_fsync_the_file_and_its_folder(tmp_path, fsyncs):
    t = events(3)
    for write, dest in (
        (lambda d: write_table(t, d, FEEDBACK_LOG), tmp_path / "a" / "t.parquet"),
        (lambda d: write_json({"x": 1}, d), tmp_path / "b" / "s.json"),
        (lambda d: copy_file(tmp_path / "a" / "t.parquet", d), tmp_path / "c.parquet"),
    ):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fsyncs.clear()
        write(dest)
        _synced(fsyncs, dest.resolve())
    fsyncs.clear()
    with ParquetStreamWriter(tmp_path / "d" / "s.parquet", FEEDBACK_LOG) as w:
        w.write(t)
    _synced(fsyncs, (tmp_path / "d" / "s.parquet").resolve())
    writer = FeedbackLogWriter(tmp_path / "log")
    fsyncs.clear()
    part = writer.append(t)
    _synced(fsyncs, part.resolve())
    assert read_feedback_log(tmp_path / "log").equals(t)


def test_a_new_log_writer_removes_temp_parts_of_dead_writers_only(tmp_path):
    from catalog.logs import _HOST

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(done.stdout)  # that process has exited
    live = os.getppid()
    log = tmp_path / "log"
    FeedbackLogWriter(log).append(events(3))

    def name(fmt: str) -> Path:
        return log / fmt.format(host=_HOST, dead=dead, live=live, me=os.getpid(), hex=uuid.uuid4().hex)

    stale = [
        name(".part.tmp-{host}-{dead}-{hex}"),
        name(".part.tmp-{dead}-{hex}"),  # the older writers' name
        name("..part.tmp-{dead}-{hex}.tmp-{dead}"),  # the older writers' name, mid-write
    ]
    kept = [
        name(".part.tmp-{host}-{live}-{hex}"),  # a live writer's part, mid-write
        name(".part.tmp-{host}-{me}-{hex}"),
        name(".part.tmp-{live}-{hex}"),
        name(".part.tmp-other-host-{dead}-{hex}"),  # another host's writer: its pid means nothing here
        name("notes.txt"),
    ]
    for p in stale + kept:
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 3600, time.time() - 3600))  # left an hour ago
    young = name(".part.tmp-{host}-{dead}-{hex}")  # its pid looks dead, but it was written just now
    young.write_bytes(b"partial")
    kept.append(young)
    writer = FeedbackLogWriter(log)
    assert sorted(writer.removed_temp_parts) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    assert writer.append(events(2)).name == "part-000001.parquet"
    assert read_feedback_log(log).num_rows == 5


# ------------------------------------------------------------------------------------------
# the ranker job


def _sim_logs(catalog, folder: Path, rounds: int = 2) -> int:
    from sim import MemberSimulator, SimConfig
    from sim.policies import MostFrequentNextCluster, build_impressions

    sim = MemberSimulator.for_catalog(catalog, SimConfig())
    policy = MostFrequentNextCluster(catalog.histories)
    writer, rows = FeedbackLogWriter(folder), 0
    for s in range(rounds):
        impressions = build_impressions(catalog, policy, slate_size=3, timestamp_ms=1_000 * s, seed=s)
        writer.append(sim.respond(impressions))
        rows += impressions.num_rows
    return rows


def _spoil(catalog, log: Path) -> int:
    """Add a part of 6 rows copied from the log, 5 of them spoiled, and a truncated part; returns the
    good rows added (1)."""
    t = read_feedback_log(log).slice(0, 6)
    click = [int(v) for v in t["click"].to_pylist()]
    click[0] = 2
    t = set_column(t, "click", click, pa.int64())
    dwell = t["dwell_s"].to_pylist()
    dwell[1] = float("inf")
    t = set_column(t, "dwell_s", dwell)
    position = t["position"].to_pylist()
    position[2] = -1
    t = set_column(t, "position", position)
    item = t["item_id"].to_pylist()
    item[3] = 10_000_000
    t = set_column(t, "item_id", item)
    keys = t["history_key"].to_pylist()
    keys[4] = keys[4][:1]
    t = set_column(t, "history_key", keys)
    pq.write_table(t, log / "part-000100.parquet")
    (log / "part-000101.parquet").write_bytes(b"PAR1 not a parquet file")
    return 1


@pytest.mark.slow
def test_train_ranker_trains_on_the_good_rows_and_keeps_the_quarantine(ml_catalog, tmp_path):
    from jobs.train_ranker import TrainJobConfig, train

    log = tmp_path / "logs"
    rows = _sim_logs(ml_catalog, log)
    good = rows + _spoil(ml_catalog, log)
    ml_catalog.save(tmp_path / "cat")
    common = dict(
        catalog=str(tmp_path / "cat"), dataset="feedback", logs=[str(log)], preset="tiny", epochs=1,
        ranker={"history": False}, export=False,
    )  # fmt: skip
    metrics = train(TrainJobConfig(out=str(tmp_path / "run"), **common))
    fb = metrics["feedback"]
    assert fb["quarantined"] == 5 and fb["quarantined_parts"] == 1 and fb["kept"] == good
    assert fb["quarantine_reasons"] == {
        "click is not 0 or 1": 1,
        "dwell_s is infinite": 1,
        "negative position": 1,
        "item_id not in the catalog": 1,
        f"history_key does not hold K={ml_catalog.history_k} clusters": 1,
    }
    q = pq.read_table(tmp_path / "run" / "quarantine.parquet")
    assert q.schema.equals(FEEDBACK_QUARANTINE) and q.num_rows == 6
    parts = {
        p: pq.read_table(tmp_path / "run" / "examples" / f"{p}.parquet").num_rows
        for p in ("train", "valid", "test")
    }
    assert sum(parts.values()) == good and min(parts.values()) > 0, parts
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["feedback"] == fb
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        train(TrainJobConfig(out=str(tmp_path / "run2"), strict_logs=True, **common))


def test_one_out_of_range_id_quarantines_its_row_not_the_part():
    """A producer that writes int64 ids (what pyarrow makes of Python ints): a value beyond int32 sets aside
    its own row; the other rows of the part are kept."""
    from catalog.feedback import FeedbackRules, check_feedback

    n = 3
    t = pa.table(
        {
            "request_id": ["a", "b", "c"],
            "member_id": [1, 2, 3],
            "timestamp": [1, 2, 3],
            "history_key": pa.array([[1, 2], [1, 2**40], [3, 4]], pa.list_(pa.int64())),
            "item_id": [1, 2, 3],
            "cluster_id": pa.array([1, 2, 2**35], pa.int64()),
            "source": ["explore"] * n,
            "position": pa.array([0, 1, 2], pa.int64()),
            "content_type": ["movie"] * n,
            "click": [True, False, True],
            "like": [False] * n,
            "share": [False] * n,
            "skip": [False] * n,
            "dwell_s": [1.0, 2.0, 3.0],
        }
    )
    good, quarantined = check_feedback(t, FeedbackRules(2, 10))
    assert good["request_id"].to_pylist() == ["a"]
    assert quarantined["reason"].to_pylist() == [
        "history_key holds a value outside int32",
        "cluster_id holds a value outside int32",
    ]
