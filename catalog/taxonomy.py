"""Interest-cluster taxonomy built from real signal.

Each item gets a vector made of three parts:

    x_i = [ c_i * cf_i / ||cf_i|| ,  w_g * g_i / ||g_i|| ,  w_e * era_i ]

- cf_i: the item's row of a rank-f truncated SVD of the member-centred rating matrix (what members
  who rated it also rated, and how), L2-normalised and shrunk by c_i = n_i / (n_i + s), n_i the
  item's rating count, so sparsely rated items lean on their metadata instead of noise;
- g_i: multi-hot genres; era_i: the release year scaled to about [-1, 1].

Seeded k-means (k-means++ start, several restarts, lowest inertia kept) splits the items into M
clusters, then the cluster centroids into G level-1 groups. Every item lands in exactly one
cluster. Names and keyword descriptions come from each cluster's genre lift, era and most-rated
titles, so an LLM can read a cluster as words.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from catalog.schemas import CLUSTERS


@dataclass(frozen=True)
class TaxonomyConfig:
    n_clusters: int = 48  # M: interest clusters (the LLMs' vocabulary of interests)
    n_groups: int = 8  # G: level-1 groups of the two-level hierarchy
    n_factors: int = 24  # rank of the rating-matrix SVD behind the collaborative part
    genre_weight: float = 0.6  # weight of the genre part relative to the collaborative part
    era_weight: float = 0.4  # weight of the release-era part
    cf_shrinkage: float = 10.0  # rating count at which the collaborative part gets half weight
    n_titles: int = 3  # representative titles in a cluster's keywords
    kmeans_restarts: int = 4  # k-means runs from different seeds; the lowest inertia wins
    kmeans_iters: int = 60  # Lloyd iterations per run (stops early on convergence)
    seed: int = 0  # one seed makes the taxonomy deterministic

    def __post_init__(self):
        if self.n_clusters < 2:
            raise ValueError(f"TaxonomyConfig.n_clusters={self.n_clusters}: need at least 2 clusters.")
        if not 1 <= self.n_groups <= self.n_clusters:
            raise ValueError(
                f"TaxonomyConfig.n_groups={self.n_groups}: must be in [1, n_clusters={self.n_clusters}]."
            )
        if self.n_factors < 1:
            raise ValueError(f"TaxonomyConfig.n_factors={self.n_factors}: must be >= 1.")
        for name in ("genre_weight", "era_weight", "cf_shrinkage"):
            if getattr(self, name) < 0:
                raise ValueError(f"TaxonomyConfig.{name}={getattr(self, name)}: must be >= 0.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Taxonomy:
    clusters: pa.Table  # CLUSTERS
    item_ids: np.ndarray  # (I,) int64
    item_cluster: np.ndarray  # (I,) int32, cluster of item_ids[i]
    inertia: float


# --------------------------------------------------------------------------------------------
# item vectors


def item_vectors(
    item_ids: np.ndarray,
    genres: list[list[str]],
    years: np.ndarray,
    interactions: pa.Table,
    genre_vocab: tuple[str, ...],
    config: TaxonomyConfig,
) -> np.ndarray:
    """(I, f + |genres| + 1) float64 item vectors as in the module docstring."""
    n_items = len(item_ids)
    row_of = {int(i): r for r, i in enumerate(item_ids)}
    members, m_idx = np.unique(interactions["member_id"].to_numpy(), return_inverse=True)
    i_idx = np.array([row_of[int(i)] for i in interactions["item_id"].to_numpy()], dtype=np.int64)
    ratings = interactions["rating"].to_numpy().astype(np.float64)
    member_mean = np.bincount(m_idx, ratings, len(members)) / np.maximum(
        np.bincount(m_idx, minlength=len(members)), 1
    )

    # member-centred ratings plus a constant for "rated at all" (co-occurrence signal)
    dense = np.zeros((n_items, len(members)))
    dense[i_idx, m_idx] = ratings - member_mean[m_idx] + 1.0
    counts = np.bincount(i_idx, minlength=n_items).astype(np.float64)
    f = min(config.n_factors, min(dense.shape) - 1)
    u, s, _ = np.linalg.svd(dense, full_matrices=False)
    cf = u[:, :f] * np.sqrt(s[:f])  # (I, f)
    # fix the sign of each factor so the result does not depend on the LAPACK build
    cf *= np.sign(cf[np.abs(cf).argmax(axis=0), np.arange(f)])
    cf /= np.maximum(np.linalg.norm(cf, axis=1, keepdims=True), 1e-12)
    cf *= (counts / (counts + config.cf_shrinkage))[:, None]

    g = np.zeros((n_items, len(genre_vocab)))
    col = {name: j for j, name in enumerate(genre_vocab)}
    for r, gs in enumerate(genres):
        for name in gs:
            g[r, col[name]] = 1.0
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)

    known = years > 0
    centre = np.median(years[known]) if known.any() else 0.0
    era = np.where(known, np.clip((years - centre) / 25.0, -1.5, 1.0), 0.0)[:, None]
    return np.hstack([cf, config.genre_weight * g, config.era_weight * era])


# --------------------------------------------------------------------------------------------
# k-means


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    centres = [x[rng.choice(len(x), p=w / w.sum())]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 * w
        centres.append(x[rng.choice(len(x), p=p / p.sum())] if p.sum() > 0 else x[rng.integers(len(x))])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    return np.array(centres)


def kmeans(
    x: np.ndarray, k: int, *, seed: int, restarts: int = 4, iters: int = 60, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted Lloyd k-means. Returns (labels (N,), centres (k, D), inertia). No cluster is empty."""
    if k > len(x):
        raise ValueError(f"k-means: k={k} clusters requested for only {len(x)} points; lower n_clusters.")
    w = np.ones(len(x)) if weights is None else weights.astype(np.float64)
    best = None
    for r in range(restarts):
        rng = np.random.default_rng([seed, r])
        c = _kmeans_pp(x, k, rng, w)
        labels = np.full(len(x), -1)
        for _ in range(iters):
            d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # (N, k)
            new = d2.argmin(1)
            # re-seed empty clusters with the points farthest from their centre
            sizes = np.bincount(new, minlength=k)
            for empty in np.flatnonzero(sizes == 0):
                far = d2[np.arange(len(x)), new].argmax()
                new[far] = empty
                d2[far, :] = np.inf
                d2[far, empty] = 0.0
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                m = labels == j
                c[j] = np.average(x[m], axis=0, weights=w[m])
        inertia = float((w * ((x - c[labels]) ** 2).sum(1)).sum())
        if best is None or inertia < best[2]:
            best = (labels.copy(), c.copy(), inertia)
    return best


# --------------------------------------------------------------------------------------------
# naming


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("'", "")).strip("-")


def _era(years: np.ndarray) -> tuple[str, str]:
    """(short label for the name, keyword) from a cluster's release years."""
    known = years[years > 0]
    if len(known) == 0:
        return "undated", "release year unknown"
    med = int(np.median(known))
    decade = med // 10 * 10
    if decade < 1960:
        return "classic", f"classics, {int(known.min())}-{int(known.max())}"
    return f"{decade % 100:02d}s", f"{decade}s"


def _genre_share(item_genres: list[list[str]]) -> dict[str, float]:
    share: dict[str, float] = {}
    for gs in item_genres:
        for g in gs:
            share[g] = share.get(g, 0.0) + 1.0 / len(item_genres)
    return share


def unique_name(genres: list[str], era: str, tiebreak: str, used: set[str]) -> str:
    """'genre1-genre2-era'; on a clash add the next genre, then `tiebreak`, then a counter. Adds to `used`."""
    slugs = [_slug(g) for g in genres] or ["misc"]
    candidates = ["-".join(slugs[:d] + [era]) for d in range(min(2, len(slugs)), len(slugs) + 1)]
    candidates += [f"{c}-{tiebreak}" for c in candidates[:1] if tiebreak]
    name = next((c for c in candidates if c not in used), None)
    if name is None:
        n = 2
        while f"{candidates[0]}-{n}" in used:
            n += 1
        name = f"{candidates[0]}-{n}"
    used.add(name)
    return name


def _rank_genres(member_genres: list[list[str]], global_share: dict[str, float]) -> list[tuple[str, float]]:
    """Genres of a cluster ranked by share * sqrt(lift); genres on under 20% of its items are dropped."""
    n = len(member_genres)
    counts: dict[str, int] = {}
    for gs in member_genres:
        for g in gs:
            counts[g] = counts.get(g, 0) + 1
    scored = []
    for g, c in counts.items():
        share = c / n
        if share >= 0.2 and g != "unknown":
            scored.append((g, share * np.sqrt(share / global_share[g])))
    scored.sort(key=lambda t: (-t[1], t[0]))
    if not scored:  # fall back to the most frequent genre
        g = max(counts, key=lambda k: (counts[k], k))
        scored = [(g, counts[g] / n)]
    return scored


def describe_clusters(
    labels: np.ndarray,
    item_titles: list[str],
    item_genres: list[list[str]],
    years: np.ndarray,
    n_ratings: np.ndarray,
    n_titles: int,
) -> list[dict]:
    """Name, keywords and description of each cluster; names unique across clusters."""
    k = int(labels.max()) + 1
    global_share = _genre_share(item_genres)
    out, used = [], set()
    for j in range(k):
        idx = np.flatnonzero(labels == j)
        ranked = _rank_genres([item_genres[i] for i in idx], global_share)
        era_short, era_kw = _era(years[idx])
        top = idx[np.lexsort((idx, -n_ratings[idx]))][:n_titles]
        titles = [item_titles[i] for i in top]
        genres = [g for g, _ in ranked[:3]]
        title_words = _slug(titles[0] if titles else "").split("-")[:3]
        name = unique_name([g for g, _ in ranked], era_short, "-".join(title_words), used)
        keywords = [g.lower() for g in genres] + [era_kw] + titles
        description = f"{', '.join(g.lower() for g in genres)}; {era_kw}; e.g. {'; '.join(titles)}"
        out.append(
            {
                "name": name,
                "keywords": keywords,
                "description": description,
                "genres": genres,
                "n_items": len(idx),
            }
        )
    return out


# --------------------------------------------------------------------------------------------


def build_taxonomy(
    items: pa.Table, interactions: pa.Table, genre_vocab: tuple[str, ...], config: TaxonomyConfig
) -> Taxonomy:
    """Cluster `items` (item_id, title, year, genres, n_ratings) into config.n_clusters clusters."""
    item_ids = items["item_id"].to_numpy().astype(np.int64)
    if config.n_clusters > len(item_ids):
        raise ValueError(
            f"TaxonomyConfig.n_clusters={config.n_clusters} exceeds the {len(item_ids)} items; lower it."
        )
    titles = items["title"].to_pylist()
    genres = items["genres"].to_pylist()
    years = items["year"].to_numpy().astype(np.int64)
    n_ratings = items["n_ratings"].to_numpy().astype(np.int64)

    x = item_vectors(item_ids, genres, years, interactions, genre_vocab, config)
    labels, centres, inertia = kmeans(
        x, config.n_clusters, seed=config.seed, restarts=config.kmeans_restarts, iters=config.kmeans_iters
    )
    sizes = np.bincount(labels, minlength=config.n_clusters)
    g_labels, _, _ = kmeans(
        centres,
        config.n_groups,
        seed=config.seed + 1,
        restarts=config.kmeans_restarts,
        iters=config.kmeans_iters,
        weights=sizes,
    )

    # stable ids: groups by size, clusters by (group, size desc, smallest item id)
    g_sizes = np.bincount(g_labels, weights=sizes, minlength=config.n_groups)
    g_order = np.lexsort((np.arange(config.n_groups), -g_sizes))
    g_rank = np.empty_like(g_order)
    g_rank[g_order] = np.arange(config.n_groups)
    min_item = np.array([item_ids[labels == j].min() for j in range(config.n_clusters)])
    c_order = np.lexsort((min_item, -sizes, g_rank[g_labels]))
    c_rank = np.empty_like(c_order)
    c_rank[c_order] = np.arange(config.n_clusters)
    item_cluster = c_rank[labels].astype(np.int32)

    desc = describe_clusters(item_cluster, titles, genres, years, n_ratings, config.n_titles)
    parent = g_rank[g_labels][c_order].astype(np.int32)  # parent of cluster id c
    # a group's name: its leading genres and era, unique across groups
    parent_names, used = [], set()
    global_share = _genre_share(genres)
    for gid in range(config.n_groups):
        rows = np.flatnonzero(np.isin(item_cluster, np.flatnonzero(parent == gid)))
        ranked = _rank_genres([genres[i] for i in rows], global_share)
        parent_names.append(unique_name([g for g, _ in ranked][:1], _era(years[rows])[0], "", used))
    clusters = pa.table(
        {
            "cluster_id": pa.array(np.arange(config.n_clusters, dtype=np.int32)),
            "name": [d["name"] for d in desc],
            "keywords": [d["keywords"] for d in desc],
            "description": [d["description"] for d in desc],
            "parent_id": pa.array(parent),
            "parent_name": [parent_names[p] for p in parent],
            "n_items": pa.array([d["n_items"] for d in desc], pa.int32()),
        },
        schema=CLUSTERS,
    )
    return Taxonomy(clusters=clusters, item_ids=item_ids, item_cluster=item_cluster, inertia=inertia)
