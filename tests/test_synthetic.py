import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.build import TABLE_SCHEMAS, Catalog
from catalog.histories import build_histories
from catalog.synthetic import SyntheticConfig, generate_world

SMALL = SyntheticConfig(n_members=3_000, n_clusters=120, n_groups=6, chunk_members=1_000, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = generate_world(out, SMALL)
    return out, manifest


def _check_catalog_contract(cat: Catalog) -> None:
    """What downstream code relies on in any catalog folder, whoever produced it."""
    m = cat.n_clusters
    assert cat.clusters["cluster_id"].to_pylist() == list(range(m))
    assert len(set(cat.cluster_names())) == m
    parent = cat.clusters["parent_id"].to_numpy()
    assert np.all(np.diff(parent) >= 0) and set(parent.tolist()) == set(range(parent.max() + 1))
    ids, cid = cat.item_cluster()
    assert np.array_equal(np.bincount(cid, minlength=m), cat.clusters["n_items"].to_numpy())
    item, member = cat.interactions["item_id"].to_numpy(), cat.interactions["member_id"].to_numpy()
    assert np.isin(item, ids).all() and np.isin(member, cat.members["member_id"].to_numpy()).all()
    n_ratings = np.bincount(item, minlength=ids.max() + 1)[ids]
    assert np.array_equal(cat.items["n_ratings"].to_numpy(), n_ratings), "n_ratings must count interactions"
    min_rating = cat.manifest["config"]["min_rating"]
    assert build_histories(cat.interactions, ids, cid, min_rating=min_rating).equals(cat.histories)
    for name, count in cat.manifest["counts"].items():
        if name in TABLE_SCHEMAS:
            assert getattr(cat, name).num_rows == count, name


def test_synthetic_and_real_catalogs_keep_the_same_contract(world, ml_catalog, tmp_path):
    out, _ = world
    real = Catalog.load(ml_catalog.save(tmp_path / "ml"))
    for name, schema in TABLE_SCHEMAS.items():
        assert pq.read_schema(out / f"{name}.parquet").equals(schema, check_metadata=False), name
    for cat in (real, Catalog.load(out)):
        _check_catalog_contract(cat)


def test_members_stay_within_their_interest_groups(world):
    """Each member draws from a few groups: the written tables (item -> cluster -> group) must show it
    against the same interactions with their members shuffled."""
    out, _ = world
    cat = Catalog.load(out)
    assert (
        cat.members.num_rows == 3_000 and np.mean([len(h) for h in cat.histories["clusters"].to_pylist()]) > 3
    )
    ids, cid = cat.item_cluster()
    group = cat.clusters["parent_id"].to_numpy()[
        cid[np.searchsorted(ids, cat.interactions["item_id"].to_numpy())]
    ]
    member = cat.interactions["member_id"].to_numpy()

    def groups_per_member(m):
        return len(np.unique(np.stack([m, group], 1), axis=0)) / len(np.unique(m))

    shuffled = groups_per_member(np.random.default_rng(0).permutation(member))
    assert groups_per_member(member) < 0.6 * shuffled, (groups_per_member(member), shuffled)


def test_same_seed_same_world(world, tmp_path):
    out, _ = world
    generate_world(tmp_path, SMALL)
    for name in TABLE_SCHEMAS:
        assert pq.read_table(tmp_path / f"{name}.parquet").equals(pq.read_table(out / f"{name}.parquet")), (
            name
        )


def test_memory_is_bounded_by_the_chunk_not_the_world(tmp_path):
    def peak(n_members: int) -> int:
        cfg = SyntheticConfig(n_members=n_members, n_clusters=200, n_groups=10, chunk_members=2_000)
        tracemalloc.start()
        generate_world(tmp_path / str(n_members), cfg)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(4_000), peak(40_000)
    assert large < 1.5 * small, (small, large)  # 10x the members, about the same peak


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match=r"SyntheticConfig.n_groups=50 exceeds n_clusters=10"):
        SyntheticConfig(n_clusters=10, n_groups=50)
    with pytest.raises(ValueError, match=r"SyntheticConfig.stickiness=1.5"):
        SyntheticConfig(stickiness=1.5)
