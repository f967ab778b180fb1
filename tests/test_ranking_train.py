"""The ranker end to end on MovieLens-100K and simulator logs: features and their bad-input policies,
training against the popularity baseline, checkpoints, export, explore/exploit, quantized inference."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from ranking import (
    ExampleStream,
    Featurizer,
    Ranker,
    TrainConfig,
    build_model,
    feedback_examples,
    movielens_ctr,
    popularity_scores,
)
from ranking.checkpoint import export_serving, load_model, load_serving
from ranking.config import tiny
from ranking.experiment import train_and_evaluate
from ranking.metrics import auc, reliability_diagram
from ranking.quantization import embedding_bytes, quantize_embeddings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ml_examples(ml_catalog):
    return movielens_ctr(ml_catalog, history_length=20)


@pytest.fixture(scope="module")
def trained(ml_examples):
    """A tiny ranker trained one epoch on the MovieLens CTR task."""
    return train_and_evaluate(ml_examples, tiny(), TrainConfig(epochs=1, batch_size=512), CPU)


def test_movielens_examples_are_causal_and_split_by_time(ml_examples):
    train, test = ml_examples.train, ml_examples.test
    assert train["timestamp"].to_numpy().max() <= test["timestamp"].to_numpy().min()
    assert 0.19 < test.num_rows / (train.num_rows + test.num_rows) < 0.21
    # a row's history holds only that member's earlier ratings
    rows = train.slice(5000, 200).to_pylist()
    inter = {}
    for r in train.to_pylist():
        inter.setdefault(r["member_id"], []).append((r["timestamp"], r["item_id"]))
    for r in rows:
        earlier = {i for ts, i in inter[r["member_id"]] if ts <= r["timestamp"]}
        assert set(r["hist_items"]) <= earlier | {r["item_id"]} and r["item_id"] not in r["hist_items"][-1:]
        assert len(r["hist_items"]) == min(r["member_n_prev"], 100)


def test_trained_ranker_beats_popularity(trained, ml_examples):
    pop = popularity_scores(ml_examples.train, ml_examples.test)
    y = ml_examples.test["like"].to_numpy()
    m = trained.metrics["like"]
    assert m["auc"] > auc(y, pop) + 0.02
    assert m["ece"] < 0.05 and 0.9 < m["oe"] < 1.1
    assert trained.train.losses[-1] < trained.train.losses[0]


def test_featurizer_bad_input_policies(ml_examples):
    schema = ml_examples.schema
    t = ml_examples.test.slice(0, 64)
    f = Featurizer(schema)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['year'\]"):
        f(t.drop_columns(["year"]))
    year = np.asarray(t["year"].to_numpy(), np.float32).copy()
    year[:3] = [np.nan, np.inf, -np.inf]
    b = f(t.set_column(t.schema.get_field_index("year"), "year", pa.array(year)))
    col = [d.name for d in schema.dense].index("year")
    assert torch.all(b.dense[:3, col] == schema.dense[col].fill) and f.stats["imputed"] >= 3
    genre = t.set_column(t.schema.get_field_index("genre"), "genre", pa.array(["Space Opera"] * 64))
    b = Featurizer(schema)(genre)
    assert torch.all(b.sparse[:, [s.name for s in schema.sparse].index("genre")] == 0)
    # histories longer than L keep the most recent L; empty ones are all padding
    long_rows = t.filter(pc.greater(pc.list_value_length(t["hist_items"]), schema.history.length))
    f2 = Featurizer(schema)
    b = f2(long_rows)
    assert f2.stats["truncated"] == long_rows.num_rows and b.hist_mask.all()
    last = long_rows["hist_items"][0].as_py()[-1]
    assert b.hist_items[0, -1] == Featurizer(schema).sparse_ids("item_id", pa.array([last]))[0]
    empty = t.set_column(
        t.schema.get_field_index("hist_items"), "hist_items", pa.array([[]] * 64, pa.list_(pa.int64()))
    ).set_column(
        t.schema.get_field_index("hist_actions"), "hist_actions", pa.array([None] * 64, pa.list_(pa.int32()))
    )
    b = Featurizer(schema)(empty)
    assert not b.hist_mask.any()
    model = build_model(schema, tiny()).eval()
    assert torch.isfinite(model.run(b).logits).all()
    bad_action = t.set_column(
        t.schema.get_field_index("hist_actions"),
        "hist_actions",
        pa.array([[9] * len(x) for x in t["hist_items"].to_pylist()], pa.list_(pa.int32())),
    )
    with pytest.raises(ValueError, match="'hist_actions' holds action code 9"):
        Featurizer(schema)(bad_action)
    null_inside = t.set_column(
        t.schema.get_field_index("hist_items"),
        "hist_items",
        pa.array([[1, None]] + [[1, 2]] * 63, pa.list_(pa.int64())),
    ).set_column(
        t.schema.get_field_index("hist_actions"),
        "hist_actions",
        pa.array([[4, 4]] * 64, pa.list_(pa.int32())),
    )
    with pytest.raises(ValueError, match="'hist_items' has null entries inside its lists"):
        Featurizer(schema)(null_inside)
    nan_label = t.set_column(t.schema.get_field_index("like"), "like", pa.array([np.nan] * 64, pa.float32()))
    with pytest.raises(ValueError, match="label column 'like'"):
        Featurizer(schema)(nan_label)


def test_checkpoint_round_trip_export_and_schema_check(trained, ml_examples, tmp_path):
    ranker = Ranker(trained.model, trained.schema, trained.config, device="cpu")
    ranker.update_bandit(ml_examples.train.slice(0, 5000))
    folder = ranker.save(tmp_path / "ckpt", metrics={"auc": trained.metrics["like"]["auc"]})
    assert json.loads((folder / "config.json").read_text())["tasks"] == ["like"]
    loaded = Ranker.load(folder, device="cpu", data_schema=ml_examples.schema)
    cand = ml_examples.test.slice(0, 100)
    a, b = ranker.score(cand), loaded.score(cand)
    assert np.allclose(a["like"], b["like"], atol=1e-6) and np.array_equal(a["score"], a["like"])
    assert torch.allclose(loaded.bandit.mean, ranker.bandit.mean)
    # a schema with another structure is refused with the difference named
    from dataclasses import replace

    wrong = replace(ml_examples.schema, tasks=("click",))
    with pytest.raises(ValueError, match="tasks: checkpoint .* has \\['like'\\], data has \\['click'\\]"):
        load_model(folder, data_schema=wrong)
    # a truncated weights file or one from another config is a clear error, not a traceback
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["ranker"]["embedding_dim"] = 12
    (broken / "config.json").write_text(json.dumps(cfg))
    shutil.copy(folder / "model.safetensors", broken / "model.safetensors")
    with pytest.raises(ValueError, match="does not match config.json"):
        load_model(broken)
    # the exported serving program loads from its file and agrees with the model
    batch = Featurizer(trained.schema, with_labels=False)(cand)
    pt2 = export_serving(trained.model, batch.inputs(), tmp_path / "serving.pt2")
    probs, phi = load_serving(pt2)(*Featurizer(trained.schema, with_labels=False)(cand.slice(0, 37)).inputs())
    assert probs.shape == (37, 1) and phi.shape == (37, 1, trained.config.tower_width)
    assert np.allclose(probs[:, 0].detach().numpy(), a["like"][:37], atol=1e-5)


def test_thompson_sampling_explores_and_exploit_is_deterministic(trained, ml_examples):
    ranker = Ranker(trained.model, trained.schema, trained.config, device="cpu")
    cand = ml_examples.test.slice(0, 50)
    assert not ranker.score(cand, explore=True)["explored"]  # no posterior yet: exploit
    ranker.update_bandit(ml_examples.train)
    draws = [
        ranker.score(cand, explore=True, generator=torch.Generator().manual_seed(s))["score"]
        for s in range(30)
    ]
    assert np.std(np.stack(draws), axis=0).mean() > 1e-3  # scores vary across draws
    mean = ranker.bandit.mean_scores(
        trained.model.run(Featurizer(trained.schema, with_labels=False)(cand)).phi[:, 0]
    ).numpy()
    assert np.abs(np.mean(draws, axis=0) - mean).max() < 0.1
    # the posterior mean ranks like the network
    assert np.corrcoef(mean, ranker.score(cand)["like"])[0, 1] > 0.8
    assert np.array_equal(ranker.score(cand)["score"], ranker.score(cand)["score"])


def test_int8_embeddings_keep_the_metric(ml_examples):
    cfg = tiny()
    result = train_and_evaluate(ml_examples, cfg, TrainConfig(epochs=1), CPU)
    q = quantize_embeddings(result.model)
    D = cfg.embedding_dim  # int8 rows hold D bytes plus a float32 middle and scale, against 4 D bytes
    assert embedding_bytes(q) * 4 * D == embedding_bytes(result.model) * (D + 8)
    stream = ExampleStream(ml_examples.test, Featurizer(result.schema), batch_size=4096)
    from ranking.train import predict

    p = predict(q, stream, CPU)["probs"][:, 0]
    assert abs(auc(ml_examples.test["like"].to_numpy(), p) - result.metrics["like"]["auc"]) < 0.005


def test_parquet_stream_matches_table(ml_examples, tmp_path):
    from catalog.io import write_table

    path = write_table(ml_examples.test, tmp_path / "test.parquet", ml_examples.test.schema)
    f = Featurizer(ml_examples.schema)
    from_table = list(ExampleStream(ml_examples.test, f, batch_size=1000))
    from_file = list(ExampleStream(path, f, batch_size=1000, prefetch=2))
    assert len(from_table) == len(from_file) == 16
    assert all(
        torch.equal(a.sparse, b.sparse) and torch.equal(a.hist_items, b.hist_items)
        for a, b in zip(from_table, from_file, strict=True)
    )
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        list(ExampleStream(tmp_path / "nothing", f))


def test_feedback_log_multitask_with_groups_and_mmoe(ml_catalog, tmp_path):
    from sim import MemberSimulator, SimConfig
    from sim.policies import MostFrequentNextCluster, build_impressions

    sim = MemberSimulator.for_catalog(ml_catalog, SimConfig())
    policy = MostFrequentNextCluster(ml_catalog.histories)
    logs = [
        sim.respond(
            build_impressions(
                ml_catalog,
                policy,
                slate_size=10,
                content_type=("movie", "trailer")[s % 2],
                timestamp_ms=1_000 * s,
                seed=s,
            )
        )
        for s in range(4)
    ]
    ex = feedback_examples(pa.concat_tables(logs), ml_catalog, history_length=10)
    assert ex.schema.tasks == ("click", "like", "share", "skip", "long_dwell")
    clicks = ex.train["click"].to_numpy().astype(bool)
    long = ex.train["long_dwell"].to_numpy().astype(bool)
    assert not long[~clicks].any() and 0.15 < long[clicks].mean() < 0.35  # 75th percentile per group
    groups = (("click", "like", "share"), ("skip",), ("long_dwell",))
    for cfg in (tiny().replace(task_groups=groups), tiny().replace(heads="mmoe")):
        r = train_and_evaluate(ex, cfg, TrainConfig(epochs=1, batch_size=256), CPU)
        assert set(r.metrics) == set(ex.schema.tasks)
        assert r.metrics["click"]["auc"] > 0.6 and r.metrics["skip"]["auc"] > 0.6
    png = reliability_diagram(
        {"click": (r.predictions["labels"][:, 0], r.predictions["probs"][:, 0])}, tmp_path / "r.png"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
