import re
from dataclasses import replace

import numpy as np
import pytest

import catalog.build
from catalog.build import Catalog, CatalogConfig, build_movielens_catalog
from catalog.io import write_table
from catalog.movielens import GENRES, DataNotFoundError, load_movielens_100k
from catalog.taxonomy import TaxonomyConfig, kmeans


def test_movielens_counts_and_fields():
    ml = load_movielens_100k()
    assert (ml.interactions.num_rows, ml.items.num_rows, ml.members.num_rows) == (100_000, 1682, 943)
    r = ml.interactions["rating"].to_numpy()
    assert r.min() == 1 and r.max() == 5
    assert ml.interactions["timestamp"].to_numpy().min() > 8e8  # 1997-98 unix seconds
    assert len(GENRES) == 19
    assert {g for gs in ml.items["genres"].to_pylist() for g in gs} <= set(GENRES)
    toy = ml.items.slice(0, 1).to_pylist()[0]
    assert toy["item_id"] == 1
    assert toy["title"] == "Toy Story" and toy["year"] == 1995 and "Animation" in toy["genres"]
    assert set(ml.members["gender"].to_pylist()) == {"M", "F"}


def test_missing_data_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ML100K_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="recbole==1.2.1"):
        load_movielens_100k()
    monkeypatch.delenv("ML100K_DIR")
    with pytest.raises(DataNotFoundError, match=rf"{tmp_path}/ml-100k.inter is missing.*ML100K_DIR"):
        load_movielens_100k(tmp_path)  # an explicit folder gets the same check and message


def test_every_item_in_exactly_one_cluster(ml_catalog):
    items, clusters = ml_catalog.items, ml_catalog.clusters
    assert items.num_rows == 1682 and len(set(items["item_id"].to_pylist())) == 1682
    cid = items["cluster_id"].to_numpy()
    assert clusters["cluster_id"].to_pylist() == list(range(48))
    assert set(cid.tolist()) == set(range(48)) and clusters["n_items"].to_numpy().min() >= 1


def test_popularity_counts_only_the_seen_ratings(ml_catalog):
    """n_ratings feeds the taxonomy, the policies and the ranker: it must not leak the held-out ratings."""
    ids = ml_catalog.items["item_id"].to_numpy()
    seen = np.bincount(ml_catalog.interactions["item_id"].to_numpy(), minlength=ids.max() + 1)[ids]
    n_ratings = ml_catalog.items["n_ratings"].to_numpy()
    assert np.array_equal(n_ratings, seen)
    assert n_ratings.sum() == ml_catalog.manifest["counts"]["interactions"] < 100_000


def test_names_unique_short_and_descriptions_readable(ml_catalog):
    names = ml_catalog.cluster_names()
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) and len(n) <= 48 for n in names)
    genre_words = {g.lower() for g in GENRES}
    for row in ml_catalog.clusters.to_pylist():
        assert any(k in genre_words for k in row["keywords"]), row
        assert row["description"].split(";")[0]  # leading genres
        assert re.search(r"\d{4}s|classics", row["description"]), row["description"]


def test_two_level_hierarchy(ml_catalog):
    parent = ml_catalog.clusters["parent_id"].to_numpy()
    assert set(parent.tolist()) == set(range(8))
    assert np.all(np.diff(parent) >= 0)  # siblings have contiguous ids
    names = dict(zip(parent.tolist(), ml_catalog.clusters["parent_name"].to_pylist(), strict=True))
    assert len(set(names.values())) == 8


def _member_cluster_entropy(catalog, cid) -> float:
    """Mean over members of the entropy of their positive items' clusters."""
    ids = catalog.items["item_id"].to_numpy()
    lut = np.zeros(ids.max() + 1, dtype=np.int64)
    lut[ids] = cid
    inter = catalog.interactions
    pos = inter["rating"].to_numpy() >= 4
    member, cluster = inter["member_id"].to_numpy()[pos], lut[inter["item_id"].to_numpy()[pos]]
    out = []
    for m in np.unique(member):
        p = np.bincount(cluster[member == m])
        p = p[p > 0] / p.sum()
        out.append(-(p * np.log(p)).sum())
    return float(np.mean(out))


def test_clusters_carry_real_signal(ml_catalog):
    """Members' positive items concentrate in fewer clusters than with random clusters of the same sizes
    (collaborative signal), and the items of a cluster share its leading genre (content signal)."""
    _, cid = ml_catalog.item_cluster()
    real = _member_cluster_entropy(ml_catalog, cid)
    shuffled = _member_cluster_entropy(ml_catalog, np.random.default_rng(0).permutation(cid))
    assert real < 0.9 * shuffled, (real, shuffled)  # measured about 0.85
    genres = ml_catalog.items["genres"].to_pylist()
    shares = []
    for row in ml_catalog.clusters.to_pylist():
        lead = row["keywords"][0]
        members = [gs for gs, c in zip(genres, cid, strict=True) if c == row["cluster_id"]]
        shares.append(np.mean([lead in {x.lower() for x in gs} for gs in members]))
    assert np.mean(shares) > 0.85  # measured about 0.90


def test_deterministic_for_a_seed_and_seed_matters(ml_catalog):
    again = build_movielens_catalog()
    assert again.clusters.equals(ml_catalog.clusters)
    assert again.items.equals(ml_catalog.items)
    assert again.histories.equals(ml_catalog.histories)
    other = build_movielens_catalog(CatalogConfig(taxonomy=TaxonomyConfig(seed=1)))
    assert not other.items["cluster_id"].equals(ml_catalog.items["cluster_id"])


def test_number_of_clusters_is_configurable():
    cat = build_movielens_catalog(CatalogConfig(taxonomy=TaxonomyConfig(n_clusters=12, n_groups=3)))
    assert cat.n_clusters == 12
    assert set(cat.items["cluster_id"].to_pylist()) == set(range(12))
    assert cat.manifest["coverage"]["possible_keys"] == 144


@pytest.mark.parametrize(
    "field,value", [("n_clusters", 1), ("n_groups", 0), ("n_factors", 0), ("genre_weight", -1.0)]
)
def test_bad_taxonomy_config_names_field(field, value):
    with pytest.raises(ValueError, match=f"TaxonomyConfig.{field}={value}"):
        replace(TaxonomyConfig(), **{field: value})


def test_kmeans_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    x = np.vstack([c + rng.normal(0, 0.5, (50, 2)) for c in centres])
    labels, _, _ = kmeans(x, 3, seed=0)
    for b in range(3):
        assert len(set(labels[b * 50 : (b + 1) * 50])) == 1
    assert len(set(labels)) == 3


def test_catalog_folder_round_trip(ml_catalog, tmp_path):
    ml_catalog.save(tmp_path / "cat")
    back = Catalog.load(tmp_path / "cat")
    for name in ("items", "clusters", "members", "interactions", "histories"):
        assert getattr(back, name).equals(getattr(ml_catalog, name)), name
    assert back.history_k == 2
    (tmp_path / "cat" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        Catalog.load(tmp_path / "cat")


def test_interrupted_save_reads_as_incomplete(ml_catalog, tmp_path, monkeypatch):
    """Saving over a complete catalog and dying after some tables must not leave the old manifest over a
    mix of old and new tables."""
    ml_catalog.save(tmp_path / "cat")
    written = []

    def write_then_die(table, path, schema):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(path)
        return write_table(table, path, schema)

    monkeypatch.setattr(catalog.build, "write_table", write_then_die)
    with pytest.raises(OSError, match="disk full"):
        ml_catalog.save(tmp_path / "cat")
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        Catalog.load(tmp_path / "cat")
