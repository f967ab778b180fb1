"""The report's estimators on hand-made data with known answers (the end-to-end report is checked in
tests/test_jobs_cli.py on the demo's run)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from catalog.schemas import BEST_OF_N, FEEDBACK_LOG
from jobs.report import _orders, best_of_n_lists, curve_point, paired_difference, replay_rates


def _log(rows: list[dict]) -> pa.Table:
    base = dict(timestamp=0, history_key=[1, 2], source="explore", content_type="movie", click=False, like=False,
                share=False, skip=False, dwell_s=0.0, cluster_id=0, position=0)  # fmt: skip
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=FEEDBACK_LOG)


def test_ranks_within_each_request_best_first_ties_to_the_smaller_item():
    requests = np.array([0, 0, 0, 1, 1])
    items = np.array([10, 11, 12, 20, 21])
    scores = np.array([0.2, 0.9, 0.2, 0.1, 0.5])
    assert _orders(scores, requests, items).tolist() == [1, 0, 2, 1, 0]


def test_replay_counts_only_the_slots_where_the_shuffle_agreed_with_the_ranker():
    # request a: logged order 10, 11, 12 with a like on 11; request b: 20, 21 with a share on 20
    log = _log([
        dict(request_id="a", member_id=1, item_id=10, position=0),
        dict(request_id="a", member_id=1, item_id=11, position=1, like=True),
        dict(request_id="a", member_id=1, item_id=12, position=2),
        dict(request_id="b", member_id=2, item_id=20, position=0, share=True),
        dict(request_id="b", member_id=2, item_id=21, position=1),
    ])  # fmt: skip
    # a ranker with the order 11, 10, 12 in a and 20, 21 in b: in a only slot 2 agrees with the log (12), in
    # b both slots do
    ranks = np.array([1, 0, 2, 0, 1])
    top1 = replay_rates(log, ranks, top=1)
    assert top1["matches"] == 1 and top1["rate"] == 1.0  # b's slot 0: 20, shared
    top2 = replay_rates(log, ranks, top=2)
    assert top2["matches"] == 2 and top2["rate"] == 0.5  # and b's slot 1: 21, no engagement
    assert replay_rates(log, ranks, top=3)["matches"] == 3  # and a's slot 2


def test_replay_estimate_is_unbiased_for_a_ranker_it_never_saw_served():
    """Shuffled logs with a position effect: the replay estimate of the best and the worst ranker's top-slot
    rate matches each one's true expected rate (computed exactly), far from the logged top slot's rate."""
    rng = np.random.default_rng(1)
    n_req, k = 20_000, 4
    p_item = rng.uniform(0.05, 0.6, size=(n_req, k))
    examine = np.array([1.0, 0.7, 0.5, 0.35])  # P(looked at) by slot
    perm = np.argsort(rng.random((n_req, k)), axis=1)  # item perm[r, j] shown at slot j
    shown_p = np.take_along_axis(p_item, perm, 1)
    liked = rng.random((n_req, k)) < examine * shown_p
    log = pa.table({
        "request_id": np.repeat([f"r{r:05d}" for r in range(n_req)], k),
        "member_id": np.repeat(np.arange(n_req), k),
        "item_id": (np.arange(n_req)[:, None] * k + perm).ravel(),
        "position": np.tile(np.arange(k, dtype=np.int32), n_req),
        "like": liked.ravel(),
        "share": np.zeros(n_req * k, bool),
    })  # fmt: skip
    requests, items = log["member_id"].to_numpy(), log["item_id"].to_numpy()
    p = p_item.ravel()[items]
    logged_top = liked[:, 0].mean()
    for sign in (1, -1):  # the best and the worst ranker
        est = replay_rates(log, _orders(sign * p, requests, items), top=1)
        truth = examine[0] * (p_item.max(1) if sign == 1 else p_item.min(1)).mean()
        assert est["matches"] == pytest.approx(n_req / k, rel=0.05)
        assert abs(est["rate"] - truth) < 1.5 * est["ci"], (est, truth)  # within 3 standard errors
        assert abs(logged_top - truth) > 4 * est["ci"]  # what the shuffled slot 0 got is another thing


def test_best_of_n_takes_the_first_n_samples_and_the_best_score_among_them():
    row = dict(history_key=[1, 2], member_id=None, candidates=[5, 7, 9], counts=[2, 1, 1], logprobs=[-1.0] * 3,
               n_samples=5, n_in_history=1, n_invalid=0, seed=3, samples=[7, 1, 5, 5, 9],
               sample_logprobs=[-1.0] * 5, scores=[0.2, 0.1, 0.9], selected=[9], selected_scores=[0.9],
               cached=True)  # fmt: skip
    table = pa.Table.from_pylist([row], schema=BEST_OF_N)
    assert best_of_n_lists(table, 1, source="t") == {(1, 2): [7]}  # the first sample, unscored
    assert best_of_n_lists(table, 2, source="t") == {(1, 2): [7]}  # 1 is in the key: dropped
    assert best_of_n_lists(table, 3, source="t") == {(1, 2): [5, 7]}  # scores 0.2 > 0.1
    assert best_of_n_lists(table, 5, source="t") == {(1, 2): [9, 5, 7]}
    with pytest.raises(ValueError, match="has 5 samples in draw order, the curve needs 8; rerun"):
        best_of_n_lists(table, 8, source="t")


def test_curve_point_novelty_and_like_rates_with_member_level_intervals():
    history = {1: [3, 4], 2: [5]}
    log = _log([
        dict(request_id="a", member_id=1, item_id=1, cluster_id=3, like=True),   # seen, liked
        dict(request_id="a", member_id=1, item_id=2, cluster_id=8, like=False),  # new
        dict(request_id="b", member_id=2, item_id=3, cluster_id=6, like=True),   # new, liked
        dict(request_id="b", member_id=2, item_id=4, cluster_id=6, like=True),   # new, liked
        dict(request_id="b", member_id=2, item_id=5, cluster_id=9, source="exploit", like=False),  # not explore
    ])  # fmt: skip
    p = curve_point(log, history)
    assert (p["members"], p["impressions"], p["novel_impressions"]) == (2, 4, 3)
    assert p["novelty"] == 0.75 and p["like_novel"] == pytest.approx(2 / 3) and p["like"] == 0.75
    # per member novelty 0.5 and 1.0: sd 0.354, half-width 1.96 * 0.354 / sqrt(2)
    assert p["novelty_ci"] == pytest.approx(1.96 * np.std([0.5, 1.0], ddof=1) / np.sqrt(2))


def test_paired_difference_is_member_by_member_over_the_members_both_policies_showed():
    history = {1: [3], 2: [5], 3: [7]}
    a = _log([
        dict(request_id="a", member_id=1, item_id=1, cluster_id=8, like=True),   # new, liked
        dict(request_id="a", member_id=1, item_id=2, cluster_id=8, like=True),   # a repeat answer: liked
        dict(request_id="b", member_id=2, item_id=3, cluster_id=6, like=False),  # new
        dict(request_id="c", member_id=3, item_id=4, cluster_id=7, like=True),   # seen
    ])  # fmt: skip
    b = _log([
        dict(request_id="a", member_id=1, item_id=1, cluster_id=9, like=False),  # new
        dict(request_id="a", member_id=1, item_id=2, cluster_id=9, like=True),   # new, liked
        dict(request_id="b", member_id=2, item_id=3, cluster_id=5, like=True),   # seen: no new cluster for 2
        dict(request_id="c", member_id=3, item_id=4, cluster_id=8, like=True),   # new, liked
    ])  # fmt: skip
    d = paired_difference(a, b, history)
    assert d["members"] == 3 and d["like_novel_members"] == 1  # only member 1 saw new clusters in both
    assert d["like_novel_diff"] == pytest.approx(1.0 - 0.5) and np.isnan(
        d["like_novel_diff_ci"]
    )  # one member
    # novelty per member: a (1, 1, 0), b (1, 0, 1): differences (0, 1, -1)
    assert d["novelty_diff"] == pytest.approx(0.0)
    assert d["novelty_diff_ci"] == pytest.approx(1.96 * np.std([0, 1, -1], ddof=1) / np.sqrt(3))
    same = paired_difference(a, a, history)
    assert (
        same["like_novel_diff"] == 0 and same["like_novel_diff_ci"] == 0 and same["like_novel_members"] == 2
    )


def test_best_of_n_with_the_global_rate_scorer_ranks_the_same_samples_by_rate():
    row = dict(history_key=[1, 2], member_id=None, candidates=[5, 7, 9], counts=[2, 1, 1], logprobs=[-1.0] * 3,
               n_samples=5, n_in_history=1, n_invalid=0, seed=3, samples=[7, 1, 5, 5, 9],
               sample_logprobs=[-1.0] * 5, scores=[0.2, 0.1, 0.9], selected=[9], selected_scores=[0.9],
               cached=True)  # fmt: skip
    table = pa.Table.from_pylist([row], schema=BEST_OF_N)
    rates = np.zeros(10)
    rates[[5, 7, 9]] = [0.1, 0.6, 0.3]  # the alignment scores' order reversed: 7 > 9 > 5
    assert best_of_n_lists(table, 5, source="t", rates=rates) == {(1, 2): [7, 9, 5]}
    assert best_of_n_lists(table, 5, source="t") == {(1, 2): [9, 5, 7]}  # the model's order is untouched
    assert best_of_n_lists(table, 3, source="t", rates=rates) == {(1, 2): [7, 5]}  # only the first 3 samples
    rates[[7, 9]] = 0.1  # a tie of all three keeps the candidates' order: most sampled (5, twice) first
    assert best_of_n_lists(table, 5, source="t", rates=rates) == {(1, 2): [5, 7, 9]}
    with pytest.raises(ValueError, match=r"candidate\(s\) \[9\] outside the rate table's 8 clusters"):
        best_of_n_lists(table, 5, source="t", rates=np.zeros(8))


def test_global_rate_scorer_is_the_training_pairs_impression_weighted_rate(tmp_path):
    from alignment.pairs import heldout_mask
    from catalog import write_table
    from catalog.schemas import FEEDBACK_PAIRS
    from jobs.report import global_rate_scorer

    rng = np.random.default_rng(0)
    rows = [dict(history_key=[int(a), int(b)], cluster_id=int(c), impressions=int(rng.integers(5, 20)), clicks=0,
                 likes=0, shares=0, skips=0, dwell_clicks=0, engagement=0.0, label=float(rng.integers(0, 11)) / 10)
            for a, b, c in rng.integers(0, 6, size=(200, 3))]  # fmt: skip
    write_table(pa.Table.from_pylist(rows, schema=FEEDBACK_PAIRS), tmp_path / "pairs.parquet", FEEDBACK_PAIRS)
    rates = global_rate_scorer(tmp_path, 7)  # no model folder: the default split (0.2, seed 0)
    held = heldout_mask(
        [tuple(r["history_key"]) for r in rows], np.array([r["cluster_id"] for r in rows]), 0.2, 0
    )
    for c in range(6):  # a hand loop over the training rows of each cluster
        num = sum(
            r["impressions"] * r["label"]
            for r, h in zip(rows, held, strict=True)
            if not h and r["cluster_id"] == c
        )
        den = sum(r["impressions"] for r, h in zip(rows, held, strict=True) if not h and r["cluster_id"] == c)
        assert rates[c] == pytest.approx(num / den)
    train = [r for r, h in zip(rows, held, strict=True) if not h]
    overall = sum(r["impressions"] * r["label"] for r in train) / sum(r["impressions"] for r in train)
    assert rates[6] == pytest.approx(overall)  # a cluster without pairs gets the overall rate
    with pytest.raises(FileNotFoundError, match="no aggregated feedback for the global-rate scorer"):
        global_rate_scorer(tmp_path / "missing", 7)
