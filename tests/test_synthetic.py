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


def test_schemas_equal_the_real_catalog(world, ml_catalog, tmp_path):
    out, _ = world
    ml_catalog.save(tmp_path / "ml")
    for name, schema in TABLE_SCHEMAS.items():
        synth = pq.read_schema(out / f"{name}.parquet")
        real = pq.read_schema(tmp_path / "ml" / f"{name}.parquet")
        assert synth.equals(real, check_metadata=False), name
        assert synth.equals(schema, check_metadata=False), name


def test_world_is_consistent_and_loadable(world):
    out, manifest = world
    cat = Catalog.load(out)
    assert cat.members.num_rows == 3_000 == manifest["counts"]["members"]
    assert cat.n_clusters == 120 and len(set(cat.cluster_names())) == 120
    assert set(cat.clusters["parent_id"].to_pylist()) == set(range(6))
    ids, cid = cat.item_cluster()
    assert np.array_equal(np.bincount(cid, minlength=120), cat.clusters["n_items"].to_numpy())
    assert set(cat.interactions["item_id"].to_pylist()) <= set(ids.tolist())
    # histories written chunk by chunk equal histories built from all interactions at once
    assert build_histories(cat.interactions, ids, cid).equals(cat.histories)
    # histories have structure: runs are merged, members stay mostly within their few groups
    lengths = [len(h) for h in cat.histories["clusters"].to_pylist()]
    assert np.mean(lengths) > 3
    parent = cat.clusters["parent_id"].to_numpy()
    groups_per_member = [len(set(parent[h].tolist())) for h in cat.histories["clusters"].to_pylist()]
    assert np.mean(groups_per_member) <= SMALL.topics_per_member


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
