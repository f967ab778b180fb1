"""Catalog build time on MovieLens-100K, against the raw file load; vectorised history building
against a per-row Python loop over the same interactions."""

from __future__ import annotations

import statistics
import time

import numpy as np

from catalog.build import build_movielens_catalog
from catalog.histories import build_histories
from catalog.movielens import load_movielens_100k


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _histories_python_loop(interactions, item_ids, item_cluster, min_rating=4.0):
    """The obvious implementation: sort rows, walk them, merge repeats per member."""
    lut = dict(zip(item_ids.tolist(), item_cluster.tolist(), strict=True))
    rows = sorted(
        (m, t, i)
        for m, i, r, t in zip(
            interactions["member_id"].to_pylist(),
            interactions["item_id"].to_pylist(),
            interactions["rating"].to_pylist(),
            interactions["timestamp"].to_pylist(),
            strict=True,
        )
        if r >= min_rating
    )
    out: dict[int, list[int]] = {}
    for m, _, i in rows:
        h = out.setdefault(m, [])
        c = lut[i]
        if not h or h[-1] != c:
            h.append(c)
    return out


def run(quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 3
    load_s = _median_time(load_movielens_100k, repeats)
    build_s = _median_time(build_movielens_catalog, repeats)
    cat = build_movielens_catalog()
    ids, cid = cat.item_cluster()
    vec_s = _median_time(lambda: build_histories(cat.interactions, ids, cid), repeats)
    loop_s = _median_time(lambda: _histories_python_loop(cat.interactions, ids, cid), repeats)
    # the two implementations agree
    loop = _histories_python_loop(cat.interactions, ids, cid)
    vec = dict(
        zip(cat.histories["member_id"].to_pylist(), cat.histories["clusters"].to_pylist(), strict=True)
    )
    assert loop == vec, "vectorised and loop histories differ"
    return [
        {
            "name": "catalog_build_ml100k",
            "value": build_s,
            "unit": "s",
            "baseline": "raw MovieLens file load",
            "baseline_value": load_s,
            "ratio": build_s / load_s,
            "detail": {
                "items": cat.items.num_rows,
                "clusters": cat.n_clusters,
                "ratings": cat.interactions.num_rows,
            },
        },
        {
            "name": "histories_ml100k",
            "value": vec_s,
            "unit": "s",
            "baseline": "per-row Python loop",
            "baseline_value": loop_s,
            "ratio": loop_s / vec_s,
            "ratio_meaning": "speed-up over the baseline",
            "detail": {"positives": int(np.sum(cat.histories["n_positive"].to_numpy()))},
        },
    ]
