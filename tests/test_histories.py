import numpy as np
import pyarrow as pa
import pytest

from catalog.histories import build_histories, history_key, history_keys, key_coverage


def _inter(rows):
    m, i, r, t = zip(*rows, strict=True)
    return pa.table(
        {
            "member_id": pa.array(m, pa.int64()),
            "item_id": pa.array(i, pa.int64()),
            "rating": pa.array(r, pa.float32()),
            "timestamp": pa.array(t, pa.int64()),
        }
    )


ITEMS = np.array([10, 11, 12, 13, 14])
CLUSTER = np.array([0, 0, 1, 2, 1], dtype=np.int32)  # item 10,11 -> 0; 12,14 -> 1; 13 -> 2


def test_repeats_merged_in_time_order():
    inter = _inter(
        [
            (1, 12, 5, 300),  # c1
            (1, 10, 4, 100),  # c0
            (1, 11, 5, 200),  # c0 (repeat of c0, merged)
            (1, 13, 4, 400),  # c2
            (1, 14, 5, 500),  # c1
        ]
    )
    h = build_histories(inter, ITEMS, CLUSTER).to_pylist()
    assert h == [
        {"member_id": 1, "clusters": [0, 1, 2, 1], "timestamps": [100, 300, 400, 500], "n_positive": 5}
    ]


def test_negatives_dropped_and_runs_join_across_them():
    inter = _inter([(7, 10, 5, 1), (7, 13, 2, 2), (7, 11, 4, 3), (7, 12, 3, 4)])
    h = build_histories(inter, ITEMS, CLUSTER).to_pylist()
    # the 2-star c2 and 3-star c1 are not positive; c0, c0 merge into one run
    assert h == [{"member_id": 7, "clusters": [0], "timestamps": [1], "n_positive": 2}]


def test_ties_in_time_broken_by_item_id_and_members_separate():
    inter = _inter([(2, 13, 5, 50), (2, 12, 5, 50), (1, 10, 5, 9), (2, 10, 4, 10), (1, 12, 5, 9)])
    h = build_histories(inter, ITEMS, CLUSTER).to_pylist()
    assert [r["member_id"] for r in h] == [1, 2]
    assert h[0]["clusters"] == [0, 1]
    assert h[1]["clusters"] == [0, 1, 2]  # item 12 (c1) before item 13 (c2) at the same second


def test_member_without_positives_has_no_history_and_threshold_is_configurable():
    inter = _inter([(1, 10, 3, 1), (2, 12, 5, 1)])
    assert build_histories(inter, ITEMS, CLUSTER)["member_id"].to_pylist() == [2]
    assert build_histories(inter, ITEMS, CLUSTER, min_rating=3)["member_id"].to_pylist() == [1, 2]
    assert build_histories(_inter([(1, 10, 1, 1)]), ITEMS, CLUSTER).num_rows == 0


def test_unknown_item_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"column 'item_id': 1 item id\(s\) not in the catalog, e\.g\. \[99\]"
    ):
        build_histories(_inter([(1, 99, 5, 1)]), ITEMS, CLUSTER)


def test_history_keys_and_coverage():
    assert history_key([3, 1, 4, 1], 2) == (4, 1)
    assert history_key([3], 2) is None
    with pytest.raises(ValueError, match="k=0"):
        history_key([1], 0)
    inter = _inter([(1, 10, 5, 1), (1, 12, 5, 2), (2, 10, 5, 1), (2, 12, 5, 2), (3, 13, 5, 1)])
    hist = build_histories(inter, ITEMS, CLUSTER)
    keys = history_keys(hist, 2)
    assert keys.to_pylist() == [
        {"member_id": 1, "history_key": [0, 1]},
        {"member_id": 2, "history_key": [0, 1]},
    ]
    cov = key_coverage(hist, 2, n_clusters=3)
    assert cov["members_with_key"] == 2 and cov["distinct_keys"] == 1 and cov["possible_keys"] == 9
    assert cov["top_keys"] == [([0, 1], 2)]
