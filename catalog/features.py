"""Feature tables derived from a catalog: item and member attributes and members' rating histories.

One definition for every consumer: the ranker's offline datasets (ranking.datasets) and the endpoint's
online feature store (serving.store) build their columns from these, so training and serving read the
same values. numpy and pyarrow only (the endpoint's ingress imports it without torch).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_POSITION_EDGES = np.array([0, 1, 2, 3, 5, 10])
_POSITION_NAMES = np.array(["0", "1", "2", "3-4", "5-9", "10+"])


def position_bucket(position: np.ndarray) -> np.ndarray:
    """Slot -> coarse bucket name ('0', '1', '2', '3-4', '5-9', '10+')."""
    return _POSITION_NAMES[np.searchsorted(_POSITION_EDGES, np.asarray(position), side="right") - 1]


def member_features(catalog) -> dict[str, np.ndarray]:
    """Member attributes in catalog member order."""
    members = catalog.members
    return {
        "member_id": members["member_id"].to_numpy(),
        "age": members["age"].to_numpy().astype(np.float32),
        "gender": np.asarray(members["gender"].to_pylist(), dtype=object),
        "occupation": np.asarray(members["occupation"].to_pylist(), dtype=object),
        "zip_code": np.asarray(members["zip_code"].to_pylist(), dtype=object),
    }


def _object_array(values: list) -> np.ndarray:
    """A 1-D object array of `values` (lists stay lists: np.asarray would make a 2-D or ragged array)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def item_features(catalog) -> dict[str, np.ndarray]:
    """Item features in catalog item order. The cluster's level-1 group and popularity still describe a
    cluster the ranker never saw in training (where exploration lands), unlike its id."""
    items = catalog.items
    genres = items["genres"].to_pylist()
    cluster = items["cluster_id"].to_numpy()
    n_ratings = items["n_ratings"].to_numpy().astype(np.float32)
    clusters = catalog.clusters
    n_clusters = int(max(clusters["cluster_id"].to_numpy().max(initial=-1), cluster.max(initial=-1))) + 1
    group = np.full(n_clusters, "unknown", dtype=object)
    group[clusters["cluster_id"].to_numpy()] = clusters["parent_name"].to_pylist()
    cluster_pop = np.bincount(cluster, weights=n_ratings, minlength=n_clusters).astype(np.float32)
    return {
        "item_id": items["item_id"].to_numpy(),
        "cluster_id": cluster,
        "year": np.where(items["year"].to_numpy() > 0, items["year"].to_numpy(), np.nan).astype(np.float32),
        "genre": np.asarray([g[0] if g else "unknown" for g in genres], dtype=object),
        "genres": _object_array(genres),  # each row a list of genre names
        "n_ratings": n_ratings,
        "cluster_group": group[cluster],
        "cluster_n_ratings": cluster_pop[cluster],
    }


def member_rating_histories(
    catalog, history_cap: int = 100
) -> tuple[np.ndarray, np.ndarray, pa.Array, pa.Array]:
    """Each member's last `history_cap` catalog ratings in time order (ties by item id), the ranker's
    history for feedback examples and for serving.

    Returns (member ids ascending, offsets (members + 1,), items int64, actions int32 = the rounded rating).
    """
    inter = catalog.interactions
    hm, hi = inter["member_id"].to_numpy(), inter["item_id"].to_numpy()
    order = np.lexsort((hi, inter["timestamp"].to_numpy(), hm))
    hm, hi, hr = hm[order], hi[order], inter["rating"].to_numpy()[order]
    uniq, first, counts = np.unique(hm, return_index=True, return_counts=True)
    lens = np.minimum(counts, history_cap)
    offsets = np.r_[0, np.cumsum(lens)].astype(np.int64)
    src = np.repeat(first + counts - lens, lens) + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], lens))
    return uniq, offsets, hi[src].astype(np.int64), hr[src].round().astype(np.int32)
