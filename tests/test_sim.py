"""The member simulator: grounded in real ratings, position-biased, seeded, schema-true, and out of reach
of the models."""

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import sim.simulator
from catalog.build import Catalog
from catalog.histories import split_by_time
from catalog.logs import FeedbackLogWriter, read_feedback_log
from catalog.movielens import load_movielens_100k
from catalog.schemas import FEEDBACK_LOG
from ranking.metrics import auc
from sim import (
    MemberSimulator,
    MostFrequentNextCluster,
    OracleNovelCluster,
    RandomNovelCluster,
    RankedListPolicy,
    ResponseConfig,
    SimConfig,
    build_impressions,
    fit_affinity,
    respond,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def simulator(ml_catalog):
    return MemberSimulator.for_catalog(ml_catalog)


def test_like_probability_tracks_real_ratings_and_generalises(simulator):
    """The simulator is fitted on every rating, so its AUC on the held-out pairs is in-sample; the same
    model fitted on the seen part only must still rank the held-out pairs well (learned structure)."""
    seen, held = split_by_time(load_movielens_100k().interactions, 0.2)
    p = simulator.like_probability(held["member_id"].to_numpy(), held["item_id"].to_numpy())
    in_sample = auc(held["rating"].to_numpy() >= 4, p)
    assert in_sample > 0.85, in_sample  # measured about 0.91
    seen_fit = fit_affinity(seen, simulator.config.affinity)
    known = np.isin(held["item_id"].to_numpy(), seen_fit.item_ids)  # every member keeps a seen rating
    held = held.filter(pa.array(known))
    p = seen_fit.like_probability(held["member_id"].to_numpy(), held["item_id"].to_numpy())
    out_of_sample = auc(held["rating"].to_numpy() >= 4, p)
    assert 0.75 < out_of_sample < in_sample, (out_of_sample, in_sample)  # measured about 0.79


def test_simulator_finds_its_data_when_the_saved_path_is_gone(ml_catalog, simulator, monkeypatch):
    """The manifest keeps the absolute MovieLens path of the machine that built the catalog."""
    moved = Catalog(
        **{n: getattr(ml_catalog, n) for n in ("items", "clusters", "members", "interactions", "histories")},
        manifest={
            **ml_catalog.manifest,
            "source": {**ml_catalog.manifest["source"], "path": "/gone/ml-100k"},
        },
    )
    fitted_on = []
    monkeypatch.setattr(
        sim.simulator, "fit_affinity", lambda ratings, cfg: fitted_on.append(ratings) or simulator.affinity
    )
    MemberSimulator.for_catalog(moved)
    assert fitted_on[0].num_rows == 100_000


def test_catalog_never_holds_the_held_out_ratings(ml_catalog):
    _, held = split_by_time(load_movielens_100k().interactions, 0.2)
    seen = set(
        zip(
            ml_catalog.interactions["member_id"].to_pylist(),
            ml_catalog.interactions["item_id"].to_pylist(),
            strict=True,
        )
    )
    held_pairs = set(zip(held["member_id"].to_pylist(), held["item_id"].to_pylist(), strict=True))
    assert held_pairs and not (seen & held_pairs)
    assert ml_catalog.manifest["counts"]["held_out_interactions"] == len(held_pairs)


def test_split_by_time_keeps_each_members_earliest_ratings():
    t = pa.table(
        {
            "member_id": pa.array([1] * 5 + [2], pa.int64()),
            "item_id": pa.array([5, 4, 3, 2, 1, 9], pa.int64()),
            "rating": pa.array([5.0] * 6, pa.float32()),
            "timestamp": pa.array([50, 40, 30, 20, 10, 1], pa.int64()),
        }
    )
    seen, held = split_by_time(t, 0.4)
    assert sorted(held["item_id"].to_pylist()) == [4, 5]  # member 1's last two by time
    assert sorted(seen["item_id"].to_pylist()) == [1, 2, 3, 9]  # member 2 keeps its only rating
    with pytest.raises(ValueError, match="holdout_fraction=1"):
        split_by_time(t, 1)


def test_position_bias_lowers_click_rate():
    rng = np.random.default_rng(0)
    n = 200_000
    pos = np.tile(np.arange(10), n // 10).astype(float)
    r = respond(np.full(n, 0.5), pos, np.full(n, "movie", dtype=object), ResponseConfig(), rng)
    ctr = np.array([r.click[pos == k].mean() for k in range(10)])
    assert np.all(np.diff(ctr) < 0.01) and ctr[0] > 2.5 * ctr[9], ctr
    assert not r.like[~r.click].any() and not r.share[~r.like].any() and not (r.skip & r.click).any()
    assert np.all(r.dwell_s[~r.click] == 0) and np.all(r.dwell_s[r.click] > 0)


def test_dwell_has_a_heavy_tail_and_depends_on_context():
    rng = np.random.default_rng(1)
    n = 100_000
    r_movie = respond(np.full(n, 0.9), np.zeros(n), np.full(n, "movie", dtype=object), ResponseConfig(), rng)
    r_trailer = respond(
        np.full(n, 0.9), np.zeros(n), np.full(n, "trailer", dtype=object), ResponseConfig(), rng
    )
    d = r_movie.dwell_s[r_movie.click]
    assert np.percentile(d, 99.9) / np.median(d) > 15  # heavy tail, far beyond a normal spread
    assert np.median(d) > 2 * np.median(r_trailer.dwell_s[r_trailer.click])
    with pytest.raises(ValueError, match="content_type.*podcast"):
        respond(np.ones(1) / 2, np.zeros(1), np.array(["podcast"], dtype=object), ResponseConfig(), rng)


def test_a_good_explorer_finds_liked_clusters_and_a_bad_one_cannot(ml_catalog, simulator):
    like = {}
    for policy in (RandomNovelCluster(ml_catalog.n_clusters), OracleNovelCluster(simulator)):
        log = MemberSimulator.for_catalog(ml_catalog, SimConfig(seed=3)).respond(
            build_impressions(ml_catalog, policy, slate_size=6, explore_slots=3, seed=3)
        )
        explore = np.asarray(log["source"].to_pylist()) == "explore"
        like[policy.name] = log["like"].to_numpy(zero_copy_only=False)[explore].mean()
    assert like["oracle"] > 1.4 * like["random"], like


def test_same_seed_same_log_and_schema_valid(ml_catalog, simulator, tmp_path):
    policy = MostFrequentNextCluster(ml_catalog.histories)
    imp = build_impressions(ml_catalog, policy, seed=5)
    a = MemberSimulator(
        simulator.affinity, *ml_catalog.item_cluster(), ml_catalog.n_clusters, SimConfig(seed=9)
    )
    b = MemberSimulator(
        simulator.affinity, *ml_catalog.item_cluster(), ml_catalog.n_clusters, SimConfig(seed=9)
    )
    c = MemberSimulator(
        simulator.affinity, *ml_catalog.item_cluster(), ml_catalog.n_clusters, SimConfig(seed=10)
    )
    la, lb, lc = a.respond(imp), b.respond(imp), c.respond(imp)
    assert la.equals(lb) and not la.equals(lc)
    assert build_impressions(ml_catalog, policy, seed=5)["item_id"].equals(imp["item_id"])
    writer = FeedbackLogWriter(tmp_path / "log")
    writer.append(la)
    writer.append(lc)
    back = read_feedback_log(tmp_path / "log")
    assert back.schema.equals(FEEDBACK_LOG) and back.num_rows == 2 * imp.num_rows
    assert (
        FeedbackLogWriter(tmp_path / "log").append(la).name == "part-000002.parquet"
    )  # appends, never overwrites
    # two writers opened on one folder (two jobs appending at once) both keep their part
    first, second = FeedbackLogWriter(tmp_path / "both"), FeedbackLogWriter(tmp_path / "both")
    names = [first.append(la).name, second.append(lc).name, first.append(la).name]
    assert names == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert read_feedback_log(tmp_path / "both").num_rows == 3 * imp.num_rows
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == names  # no temporary file left


def test_slates_explore_only_novel_clusters(ml_catalog, simulator):
    hist = dict(
        zip(
            ml_catalog.histories["member_id"].to_pylist(),
            ml_catalog.histories["clusters"].to_pylist(),
            strict=True,
        )
    )
    for policy in (
        RandomNovelCluster(ml_catalog.n_clusters),
        MostFrequentNextCluster(ml_catalog.histories),
        OracleNovelCluster(simulator),
    ):
        imp = build_impressions(ml_catalog, policy, member_ids=list(hist)[:60], seed=0)
        for m, c, s, key in zip(
            *(imp[x].to_pylist() for x in ("member_id", "cluster_id", "source", "history_key")), strict=True
        ):
            assert key == hist[m][-2:]
            if s == "explore":
                assert c not in hist[m], (policy.name, m, c)
    ranked = RankedListPolicy({1: [hist[1][0], 7, 3]})
    assert ranked.choose(1, hist[1], 5, np.random.default_rng(0)) == [c for c in (7, 3) if c not in hist[1]]


def test_most_frequent_next_follows_transitions():
    t = pa.table(
        {
            "member_id": pa.array([1, 2, 3], pa.int64()),
            "clusters": pa.array([[0, 1, 2], [0, 1, 3], [4, 1, 0]], pa.list_(pa.int32())),
        }
    )
    pol = MostFrequentNextCluster(t)
    assert pol.choose(9, [5, 0], 1, np.random.default_rng(0)) == [1]  # 0 -> 1 twice
    assert pol.choose(9, [0, 1], 2, np.random.default_rng(0)) == [2, 3]  # after 1: 2, 3 once each; 0 seen


def test_bad_impressions_are_clear_errors(ml_catalog, simulator):
    imp = build_impressions(ml_catalog, RandomNovelCluster(ml_catalog.n_clusters), member_ids=[1, 2], seed=0)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['position'\]"):
        simulator.respond(imp.drop_columns(["position"]))
    bad = imp.set_column(imp.schema.get_field_index("source"), "source", pa.array(["organic"] * imp.num_rows))
    with pytest.raises(ValueError, match="column 'source'.*organic"):
        simulator.respond(bad)
    unknown = imp.set_column(
        imp.schema.get_field_index("item_id"), "item_id", pa.array([99999] * imp.num_rows)
    )
    with pytest.raises(ValueError, match="item_id.*99999"):
        simulator.respond(unknown)


def _imports(package: str) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["explore", "alignment", "ranking", "catalog"])
def test_models_never_import_the_simulator(package):
    found = _imports(package)
    assert "sim" not in found and "jobs" not in found, found
    if package == "catalog":
        assert not found & {"explore", "alignment", "ranking", "sim", "jobs", "bench"}


def test_log_writer_ignores_foreign_files_and_corrupt_manifest_is_clear(tmp_path, ml_catalog):
    from catalog.build import Catalog

    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "part-notes.parquet").write_text("not ours")
    writer = FeedbackLogWriter(tmp_path / "log")
    imp = build_impressions(ml_catalog, RandomNovelCluster(ml_catalog.n_clusters), member_ids=[1], seed=0)
    assert writer.append(MemberSimulator.for_catalog(ml_catalog).respond(imp)).name == "part-000000.parquet"
    assert read_feedback_log(tmp_path / "log").num_rows == imp.num_rows
    ml_catalog.save(tmp_path / "cat")
    (tmp_path / "cat" / "manifest.json").write_text("{truncated")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        Catalog.load(tmp_path / "cat")
