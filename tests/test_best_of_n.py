"""The main job on a tiny world: real vLLM sampling, alignment scoring in Ray actors, a real Redis publish,
and a failure that leaves the live version alone."""

from __future__ import annotations

import os
import shutil

import pytest
import redis

from catalog.io import read_table
from catalog.schemas import BEST_OF_N
from explore.cache import CacheReader, decode_entry, key_field, list_versions, live_version, version_meta

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(ml_catalog, tmp_path_factory):
    from catalog.vocabulary import ClusterVocabulary
    from explore.examples import ExampleConfig
    from explore.sft import SFTConfig, train_novelty
    from jobs.simulate import simulate_round
    from jobs.train_alignment import AlignmentTrainFields
    from jobs.train_alignment import train as train_alignment
    from lm.presets import TinyLMConfig
    from sim import MemberSimulator, SimConfig

    root = tmp_path_factory.mktemp("bon")
    ml_catalog.save(root / "catalog")
    vocab = ClusterVocabulary.from_clusters(ml_catalog.clusters)
    train_novelty(
        vocab,
        ml_catalog.histories,
        root / "novelty",
        SFTConfig(max_steps=30, batch_size=24, max_eval_examples=64, tiny=TinyLMConfig(num_hidden_layers=2)),
        ExampleConfig(k=2, max_per_key=16),
        progress=False,
    )
    simulator = MemberSimulator.for_catalog(ml_catalog, SimConfig(seed=0))
    for r in range(4):
        simulate_round(ml_catalog, simulator, "random", str(root / "logs"), explore_slots=8, seed=10 + r)
    fields = AlignmentTrainFields(
        catalog=str(root / "catalog"),
        logs=[str(root / "logs")],
        engine="pyarrow",
        max_steps=15,
        batch_size=32,
    )
    summary = train_alignment(fields, root / "alignment", progress=False)
    return {"root": root, "alignment_summary": summary}


def config(world, **kw):
    from jobs.best_of_n import BestOfNFields

    root = world["root"]
    values = dict(
        catalog=str(root / "catalog"),
        novelty=str(root / "novelty"),
        alignment=str(root / "alignment"),  # the train_alignment folder: model/ is found inside
        slots=3,
        n=12,
        limit=40,
        batch_size=16,
    )
    return BestOfNFields(**{**values, **kw})


@pytest.fixture(scope="module")
def published(world, ray_local, redis_server):
    from jobs.best_of_n import run

    out = world["root"] / "run1"
    # the tiny world's novelty model has no recorded evaluation: its gates fail, so the first version is forced
    return out, run(config(world, force=True), out, redis_server.url)


def test_job_publishes_what_it_selected(published, world, redis_server):
    import torch

    from catalog import Catalog
    from explore import load_keys
    from explore.pipeline import balanced_batch

    out, s = published
    client = redis.Redis.from_url(redis_server.url)
    assert live_version(client) == s["version"] and s["previous_version"] is None
    assert s["keys"] == 40 and s["samples"] == 40 * 12 and s["valid_share"] == 1.0
    assert 0 < s["mean_selected"] <= 3 and s["keys_cached"] == 40
    assert s["entries"] == 40 + s["backoff_entries"] and s["backoff_entries"] > 1
    assert set(s["stage_busy_s"]) == {"sample", "score", "write"} and s["stage_busy_s"]["sample"] > 0
    # auto: one single-threaded sampling actor per core without a GPU (as many as the 2-CPU Ray holds)
    cores = os.cpu_count() or 1
    assert s["novelty_actors"] == (1 if torch.cuda.is_available() else min(4, cores, 3))
    assert s["keys_per_batch"] == balanced_batch(40, 16, s["novelty_actors"])

    table = read_table(out / "selected", BEST_OF_N)
    # several actors finish blocks out of order; the rows still come back in the keys' order
    catalog = Catalog.load(world["root"] / "catalog")
    keys, _ = load_keys("observed", catalog.histories, 2, catalog.n_clusters, limit=40, per_member=False)
    assert table["history_key"].to_pylist() == keys["history_key"].to_pylist()
    reader = CacheReader(client, k=2)
    for row in table.to_pylist()[:10]:
        key = tuple(row["history_key"])
        assert row["selected"] and all(c not in key for c in row["selected"])
        assert len(row["scores"]) == len(row["candidates"])
        best = sorted(row["scores"], reverse=True)[: len(row["selected"])]
        assert row["selected_scores"] == pytest.approx(best, abs=1e-6)  # the top scores, best first
        hit = reader.lookup(key)
        assert hit.level == "exact" and hit.version == s["version"]
        assert list(hit.clusters) == row["selected"]
        assert list(hit.scores) == pytest.approx(row["selected_scores"], abs=1e-5)
        assert hit.models["novelty_model"] == s["novelty_model"]
        assert hit.models["alignment_model"] == s["alignment_model"]
    raw = client.hget(f"{{explore}}:v:{s['version']}", key_field(table["history_key"][0].as_py()))
    assert decode_entry(raw)[0] == table["selected"][0].as_py()

    seen = {tuple(k) for k in table["history_key"].to_pylist()}
    unseen = next((a, b) for a in range(48) for b in range(48) if a != b and (a, b) not in seen)
    hit = reader.lookup(unseen)
    assert hit.level in ("backoff", "global") and hit.clusters and not set(hit.clusters) & set(unseen)
    client.close()


def test_fused_and_separate_stages_select_the_same_clusters(published, world, redis_server, tmp_path):
    """Sampling and scoring in one actor (the default without a GPU) or in two actor stages is a matter of
    resources only: the same keys get the same samples, scores and selection either way."""
    import torch

    from jobs.best_of_n import run

    out, s = published
    assert s["fused_stages"] == (not torch.cuda.is_available())
    other = "on" if not s["fused_stages"] else "off"
    t = run(
        config(world, limit=16, force=True, fuse_stages=other, namespace="explore-other"),
        tmp_path / "other",
        redis_server.url,
    )
    assert t["fused_stages"] == (other == "on") and set(t["stage_busy_s"]) == {"sample", "score", "write"}
    assert t["stage_busy_s"]["sample"] > 0 and t["stage_busy_s"]["score"] > 0
    first = {tuple(r["history_key"]): r for r in read_table(out / "selected", BEST_OF_N).to_pylist()}
    again = read_table(tmp_path / "other" / "selected", BEST_OF_N).to_pylist()
    assert len(again) == 16
    for row in again:
        ref = first[tuple(row["history_key"])]
        assert row["candidates"] == ref["candidates"] and row["selected"] == ref["selected"]
        assert row["scores"] == pytest.approx(ref["scores"], abs=1e-4)


def test_forced_gates_are_recorded_in_the_version_meta_and_summary(published, redis_server):
    _, s = published
    g = s["release_gates"]
    assert g["forced"] and not g["passed"] and "novelty_validity" in g["failed"]
    assert g["gates"]["novelty_validity"] == {"value": None, "threshold": 0.9, "passed": False}
    auc = s["release_gates"]["gates"]["alignment_auc"]["value"]
    assert isinstance(auc, float)  # the alignment job recorded its held-out AUC and baseline
    client = redis.Redis.from_url(redis_server.url)
    meta = version_meta(client, "explore", s["version"])
    assert meta["gates"] == "forced" and "novelty_validity" in meta["gates_failed"].split(",")
    assert float(meta["gate_novelty_validity_min"]) == 0.9 and meta["gate_novelty_validity"] == ""
    assert float(meta["gate_alignment_auc"]) == pytest.approx(auc)
    client.close()


def test_a_failed_gate_refuses_the_publish_and_leaves_the_live_version(
    published, world, redis_server, tmp_path
):
    from jobs.best_of_n import ReleaseGateError, run

    _, s = published
    with pytest.raises(ReleaseGateError) as err:
        run(config(world, limit=8, alignment_auc_margin=0.5), tmp_path / "refused", redis_server.url)
    text = str(err.value)
    assert "live cache version stays" in text
    assert (
        "release gate novelty_validity" in text
        and "not recorded" in text
        and "--min-novelty-validity" in text
    )
    assert "release gate alignment_auc" in text and "threshold 0.5000 (--alignment-auc-margin" in text
    assert "--force" in text and "novelty.json" in text and "alignment.json" in text
    client = redis.Redis.from_url(redis_server.url)
    assert live_version(client) == s["version"] and {v for v, _ in list_versions(client)} == {s["version"]}
    client.close()
    assert not (tmp_path / "refused" / "selected").exists()


def test_failed_run_leaves_the_live_version_and_no_partial_keys(published, world, redis_server, tmp_path):
    from jobs.best_of_n import run

    _, s = published
    broken = tmp_path / "alignment"
    shutil.copytree(world["root"] / "alignment" / "model", broken)
    (broken / "head.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(Exception):  # noqa: B017  (whatever the actor raises, the publish must not happen)
        run(config(world, alignment=str(broken), limit=8, force=True), tmp_path / "run2", redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    assert live_version(client) == s["version"]
    versions = {v for v, _ in list_versions(client)}
    assert versions == {s["version"]}
    leftovers = [k for k in client.scan_iter("{explore}:v:*") if s["version"].encode() not in k]
    assert leftovers == []  # the aborted version's keys were deleted
    assert version_meta(client, "explore", s["version"])["status"] == "live"
    client.close()


def test_actors_that_cannot_all_fit_are_refused_before_the_run(published, world, redis_server, tmp_path):
    """2 CPUs per model actor on the 2-CPU Ray leaves nothing for the cache writer's actor: the streaming
    run would stall once the sampler's output queue fills (it did, at 10^4 keys). Refused before any actor
    starts, with the flag to change; the live version stays."""
    from jobs.best_of_n import run

    _, s = published
    with pytest.raises(
        ValueError, match=r"need 2\.2 CPUs at once .*--num-cpus 2 each.* has 2: .*Lower --num-cpus"
    ):
        run(config(world, num_cpus=2.0, limit=8, force=True), tmp_path / "run3", redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    assert live_version(client) == s["version"] and {v for v, _ in list_versions(client)} == {s["version"]}
    client.close()


def test_cache_command_reads_and_refuses_a_rollback_without_previous(published, redis_server, capsys):
    from jobs.cache import main

    out, s = published
    row = read_table(out / "selected", BEST_OF_N).slice(0, 1).to_pylist()[0]
    key = ",".join(map(str, row["history_key"]))
    with pytest.raises(SystemExit) as exit_:
        main(["lookup", key, "--redis-url", redis_server.url, "--top", "2"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert f"exact (field '{key}') in version {s['version']}" in printed
    assert printed.count("cluster ") == min(2, len(row["selected"]))
    with pytest.raises(SystemExit) as exit_:
        main(["rollback", "--redis-url", redis_server.url])
    assert exit_.value.code == 2 and "previous" in capsys.readouterr().err
