"""The impression log joined with engagement events: hand-made logs with known answers."""

import random

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from catalog.join import join_feedback
from catalog.schemas import ENGAGEMENT_EVENTS, FEEDBACK_LOG, IMPRESSION_LOG

T0 = 1_700_000_000_000


def _impressions(rows):
    cols = {name: [] for name in IMPRESSION_LOG.names}
    for request, item, position in rows:
        values = dict(
            request_id=request, member_id=7, timestamp=T0 + (0 if request == "r1" else 1000),
            history_key=[1, 2], item_id=item, cluster_id=item % 5, source="explore" if position < 2 else "exploit",
            position=position, content_type="movie", score=0.5, explored=False, cache_level="exact",
            cache_version="v1", ranker_version="abc", shuffled=False,
        )  # fmt: skip
        for name in cols:
            cols[name].append(values[name])
    return pa.table(cols, schema=IMPRESSION_LOG)


def _events(rows):
    cols = {name: [] for name in ENGAGEMENT_EVENTS.names}
    for request, item, after_s, flags, dwell in rows:
        values = dict(request_id=request, item_id=item, received_ms=T0 + int(after_s * 1000), dwell_s=dwell)
        values.update({f: f in flags for f in ("click", "like", "share", "skip")})
        for name in cols:
            cols[name].append(values[name])
    return pa.table(cols, schema=ENGAGEMENT_EVENTS)


IMPRESSIONS = [
    ("r1", 10, 0),
    ("r1", 11, 1),
    ("r1", 12, 2),
    ("r2", 20, 0),
    ("r2", 21, 1),
    ("r2", 22, 2),
    ("r2", 22, 2),
]
EVENTS = [
    ("r1", 10, 1.0, {"click"}, 30.0),
    ("r1", 10, 5.0, {"like"}, 0.0),  # a later event of the same item: merged
    ("r1", 10, 1.0, {"click"}, 30.0),  # the client's retry: a duplicate
    ("r1", 999, 2.0, {"click"}, 5.0),  # never served
    ("r2", 21, 3 * 86_400.0, {"click"}, 9.0),  # beyond the late window
    ("r2", 20, 4.0, {"skip"}, 0.0),
]


def test_join_gives_one_row_per_impression_and_quarantines_what_it_cannot_join():
    feedback, quarantine, stats = join_feedback(_impressions(IMPRESSIONS), _events(EVENTS), late_s=86_400)
    assert feedback.schema.equals(FEEDBACK_LOG, check_metadata=False)
    rows = {(r["request_id"], r["item_id"]): r for r in feedback.to_pylist()}
    assert len(rows) == feedback.num_rows == 6  # the impression served twice counts once
    assert rows[("r1", 10)] | {} == {
        **rows[("r1", 10)],
        "click": True,
        "like": True,
        "share": False,
        "dwell_s": 30.0,
    }
    assert rows[("r2", 20)]["skip"] and not rows[("r2", 20)]["click"]
    for key in [("r1", 11), ("r1", 12), ("r2", 21), ("r2", 22)]:  # no (timely) event: a non-engagement
        assert not any(rows[key][f] for f in ("click", "like", "share", "skip")) and rows[key]["dwell_s"] == 0
    assert stats["quarantined"] == {"no impression": 1, "duplicate": 1, "late": 1, "duplicate impression": 1}
    assert stats["engaged_impressions"] == 2 and stats["events"] == 6 and stats["impressions"] == 6
    by_reason = {r["reason"]: r for r in quarantine.to_pylist()}
    assert by_reason["no impression"]["item_id"] == 999 and by_reason["late"]["item_id"] == 21
    assert by_reason["duplicate"]["item_id"] == 10 and by_reason["duplicate impression"]["item_id"] == 22


def test_join_does_not_depend_on_the_order_of_its_input_rows():
    expected = join_feedback(_impressions(IMPRESSIONS), _events(EVENTS))
    rng = random.Random(0)
    for _ in range(5):
        imps, evs = list(IMPRESSIONS), list(EVENTS)
        rng.shuffle(imps)
        rng.shuffle(evs)
        got = join_feedback(_impressions(imps), _events(evs))
        assert got[0].equals(expected[0]) and got[1].equals(expected[1]) and got[2] == expected[2]


def test_a_tighter_late_window_sets_more_events_aside_and_a_bad_one_is_refused():
    _, _, stats = join_feedback(_impressions(IMPRESSIONS), _events(EVENTS), late_s=2.5)
    assert (
        stats["quarantined"]["late"] == 3
    )  # the skip (3 s after its impression) and the like (5 s) are now late too
    with pytest.raises(ValueError, match="late_s=-1"):
        join_feedback(_impressions(IMPRESSIONS), _events(EVENTS), late_s=-1)


def test_empty_logs_join_to_empty_tables():
    feedback, quarantine, stats = join_feedback(IMPRESSION_LOG.empty_table(), ENGAGEMENT_EVENTS.empty_table())
    assert feedback.num_rows == 0 and quarantine.num_rows == 0 and stats["feedback_rows"] == 0


def _write_parts(folder, table, n_parts):
    from catalog.logs import LogWriter

    writer = LogWriter(folder, table.schema)
    step = -(-table.num_rows // n_parts)
    for i in range(0, table.num_rows, step):
        writer.append(table.slice(i, step))


def test_the_ray_engine_gives_the_same_rows_as_pyarrow(ray_local, tmp_path):
    from jobs.join_feedback import JoinConfig, join

    rng = random.Random(1)
    imps = [(f"req-{r}", 100 + i, i) for r in range(40) for i in range(5)]
    evs = [(req, item, rng.uniform(0, 3), {rng.choice(["click", "like", "skip"])}, rng.uniform(0, 60))
           for req, item, _ in rng.sample(imps, 120)]  # fmt: skip
    evs += [evs[0], ("req-x", 1, 1.0, {"click"}, 1.0)]  # a duplicate, an event of no impression
    _write_parts(tmp_path / "imp", _impressions(imps), 3)
    _write_parts(tmp_path / "ev", _events(evs), 4)
    results = {}
    for engine in ("pyarrow", "ray"):
        cfg = JoinConfig(impressions=str(tmp_path / "imp"), events=str(tmp_path / "ev"), out=str(tmp_path / engine),
                         engine=engine, buckets=5, late_s=1.0)  # fmt: skip
        summary = join(cfg)
        assert summary["engine"] == engine
        results[engine] = (
            pa.concat_tables(
                pa.parquet.read_table(p) for p in sorted((tmp_path / engine / "feedback").glob("*.parquet"))
            ),
            pa.parquet.read_table(tmp_path / engine / "quarantine.parquet"),
            {k: v for k, v in summary.items() if k not in ("engine", "wall_s", "out")},
        )
    (f1, q1, s1), (f2, q2, s2) = results["pyarrow"], results["ray"]
    assert f1.equals(f2) and q1.equals(q2) and s1 == s2
    assert s1["feedback_rows"] == 200 and s1["quarantined"]["no impression"] == 1
    assert s1["quarantined"]["duplicate"] == 1 and s1["quarantined"]["late"] > 0
