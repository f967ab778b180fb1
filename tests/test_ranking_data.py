"""The ranker on any data: splits with validation parts, the frequency filter's rare/unseen row,
multi-valued fields, histories without actions or over a table item field, early stopping with the best
epoch restored, a warm-up that does not grow with the epoch budget, feature spec files and the train
job on a user's parquet, and the DNN baseline."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ranking import Featurizer, Ranker, TrainConfig, Trainer, build_model
from ranking.baseline import build_dnn
from ranking.config import tiny
from ranking.data import ExampleStream
from ranking.datasets import movielens_ctr, split_parts
from ranking.experiment import train_and_evaluate
from ranking.layers.embeddings import PAD_ID, RARE_ID
from ranking.schema import DenseField, FeatureSchema, HistorySpec, SparseField
from ranking.spec import load_spec, schema_from_spec, spec_dict, user_examples
from ranking.train import validation_metrics

CPU = torch.device("cpu")


def _table(n: int = 400, seed: int = 0) -> pa.Table:
    """A small CTR table: member 0..29 (member 29 once, in the first row), items, a genre list, a history."""
    rng = np.random.default_rng(seed)
    member = rng.integers(0, 29, n)
    member[0] = 29
    item = rng.integers(100, 140, n)
    genres = [["a", "b"][: 1 + (i % 2)] if i % 5 else [] for i in range(n)]
    hist = [list(rng.integers(100, 140, rng.integers(0, 6))) for _ in range(n)]
    y = ((member % 2 == 0) ^ (item % 3 == 0)).astype(np.float32)
    return pa.table(
        {
            "member_id": pa.array(member, pa.int64()),
            "item_id": pa.array(item, pa.int64()),
            "genres": pa.array(genres, pa.list_(pa.string())),
            "age": pa.array(rng.normal(30, 5, n), pa.float32()),
            "hist_items": pa.array(hist, pa.list_(pa.int64())),
            "ts": pa.array(np.arange(n), pa.int64()),
            "click": pa.array(y),
        }
    )


def _schema(**hist) -> FeatureSchema:
    return FeatureSchema(
        sparse=(
            SparseField("member_id", "qr", 1 << 10, min_count=2),
            SparseField("item_id", "qr", 1 << 10),
            SparseField("genres", "table", multi=True, max_values=3),
        ),
        dense=(DenseField("age"),),
        tasks=("click",),
        history=HistorySpec(
            **{"items": "hist_items", "actions": "", "item_field": "item_id", "length": 4, **hist}
        ),
        dataset="toy",
    )


def test_splits_hold_out_by_one_time_cut_or_per_member():
    rng = np.random.default_rng(1)
    m = np.repeat(np.arange(50), 20)
    ts = rng.integers(0, 10_000, m.size)
    it = rng.integers(0, 500, m.size)
    part = split_parts(m, ts, it, "global-time", 0.2, 0.1)
    assert abs((part == 2).mean() - 0.2) < 0.01 and abs((part == 1).mean() - 0.1) < 0.01
    assert ts[part == 0].max() <= ts[part == 1].min() and ts[part == 1].max() <= ts[part == 2].min()
    part = split_parts(m, ts, it, "member-time", 0.2, 0.1)
    for member in range(50):
        rows = m == member
        p, t = part[rows], ts[rows]
        assert (p == 2).sum() == 4 and (p == 1).sum() == 2  # 20% and 10% of each member's 20 rows
        assert t[p == 0].max() <= t[p == 1].min() and t[p == 1].max() <= t[p == 2].min()
    assert not (split_parts(m, ts, it, "global-time", 0.2, 0.0) == 1).any()
    with pytest.raises(ValueError, match="split='random'"):
        split_parts(m, ts, it, "random", 0.2, 0.1)
    with pytest.raises(ValueError, match="together below 1"):
        split_parts(m, ts, it, "global-time", 0.6, 0.5)


def test_movielens_global_split_has_new_members_and_a_validation_part(ml_catalog):
    ex = movielens_ctr(ml_catalog, features="standard", history_length=10)
    assert ex.valid is not None and ex.valid.num_rows > 0
    assert ex.train["timestamp"].to_numpy().max() <= ex.valid["timestamp"].to_numpy().min()
    assert ex.valid["timestamp"].to_numpy().max() <= ex.test["timestamp"].to_numpy().min()
    new = ~np.isin(ex.test["member_id"].to_numpy(), ex.train["member_id"].to_numpy())
    assert new.mean() > 0.3  # one time cut: many test members were never seen in training
    assert ex.schema.field("genres").multi and ex.schema.field("member_id").has_rare_row
    assert ex.train["genres"].type == pa.list_(pa.string())
    per_member = movielens_ctr(ml_catalog, split="member-time", features="standard", history_length=10)
    assert np.isin(per_member.test["member_id"].to_numpy(), per_member.train["member_id"].to_numpy()).all()


def test_rare_and_unseen_ids_share_one_learned_row():
    t = _table()
    schema = _schema().fit(t)
    f = schema.field("member_id")
    assert f.has_rare_row and f.admitted_mask().sum() == 29  # member 29 was seen once: below min_count 2
    again = FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert np.array_equal(again.field("member_id").admitted_mask(), f.admitted_mask())
    fz = Featurizer(schema)
    probe = t.slice(0, 3).set_column(0, "member_id", pa.array([29, 12345, 3], pa.int64()))
    batch = fz(probe)
    assert batch.sparse[0, 0] == RARE_ID and batch.sparse[1, 0] == RARE_ID and batch.sparse[2, 0] >= 0
    assert fz.stats["rare"] == 2
    torch.manual_seed(0)
    model = build_model(schema, tiny())
    table = model.sparse.tables["member_id"]
    with torch.no_grad():
        table.rare.copy_(torch.arange(table.rare.numel(), dtype=torch.float32))
        emb = model.sparse(batch.sparse)[:, 0]
    assert torch.equal(emb[0], table.rare) and torch.equal(emb[1], table.rare)
    assert not torch.equal(emb[2], table.rare)
    # the rare row trains: rows of rare members reach it
    r = train_and_evaluate(_examples(t, schema), tiny(), TrainConfig(epochs=1, batch_size=64), CPU)
    assert not torch.equal(r.model.sparse.tables["member_id"].rare.detach(), torch.zeros_like(table.rare))


def _examples(t: pa.Table, schema: FeatureSchema):
    from ranking.datasets import Examples

    return Examples(t.slice(0, 300), t.slice(350), schema, t.slice(300, 50))


def test_multi_valued_field_is_mean_pooled_and_order_free():
    t = _table()
    schema = _schema().fit(t)
    assert schema.field("genres").vocab == ("a", "b")
    probe = t.slice(0, 4).set_column(
        2, "genres", pa.array([["a", "b"], ["b", "a"], [], ["a", "a", "b", "b"]], pa.list_(pa.string()))
    )
    fz = Featurizer(schema)
    b = fz(probe)
    at = schema.sparse_offsets()["genres"]
    cols = b.sparse[:, at : at + 3]
    assert cols[0].tolist() == [1, 2, PAD_ID] and cols[2].tolist() == [0, PAD_ID, PAD_ID]
    assert fz.stats["truncated_values"] == 1
    model = build_model(schema, tiny())
    emb = model.sparse(b.sparse)[:, 2]
    table = model.sparse.tables["genres"].table.weight
    assert torch.allclose(emb[0], emb[1]) and torch.allclose(emb[0], (table[1] + table[2]) / 2)
    assert torch.allclose(emb[2], table[0])  # an empty list reads as the unknown row
    with pytest.raises(ValueError, match="'genres' has type string; field 'genres' is multi-valued"):
        fz(probe.set_column(2, "genres", pa.array(["a"] * 4)))


def test_history_without_actions_over_a_table_item_field_trains():
    t = _table()
    schema = FeatureSchema(
        sparse=(SparseField("member_id", "qr", 1 << 10), SparseField("item_id", "table")),
        dense=(DenseField("age"),),
        tasks=("click",),
        history=HistorySpec("hist_items", "", "item_id", 2, 4),
    ).fit(t)
    b = Featurizer(schema)(t.slice(0, 50))
    assert set(b.hist_actions[b.hist_mask].tolist()) == {1}
    assert (b.hist_items[b.hist_mask] >= 1).all()  # vocabulary rows of the item field, not hashes
    r = train_and_evaluate(_examples(t, schema), tiny(), TrainConfig(epochs=1, batch_size=64), CPU)
    assert np.isfinite(r.metrics["click"]["logloss"])


def test_early_stopping_restores_the_best_epoch_and_warm_up_ignores_the_budget():
    t = _table(1200)
    schema = _schema().fit(t)
    fz = Featurizer(schema)
    train = ExampleStream(t.slice(0, 900), fz, batch_size=64, shuffle=True)
    valid = ExampleStream(t.slice(900), Featurizer(schema), batch_size=512)
    torch.manual_seed(0)
    model = build_model(schema, tiny())
    # min_delta so large that no epoch after the first counts as better: stop after 1 + patience epochs
    cfg = TrainConfig(epochs=6, batch_size=64, patience=2, min_delta=10.0, lr=0.05)
    seen = []
    result = Trainer(model, cfg, CPU).fit(train, valid=valid, on_epoch=seen.append)
    assert [r["epoch"] for r in result.validation] == [1, 2, 3] and seen == result.validation
    assert result.stopped_early and result.best_epoch == 1
    assert validation_metrics(model, valid, CPU)["loss"] == pytest.approx(
        result.validation[0]["loss"], abs=1e-6
    )
    assert result.validation[2]["loss"] != pytest.approx(result.validation[0]["loss"], abs=1e-6)

    # warm-up covers warmup_fraction of planned_epochs, whatever the epoch budget: with 4 planned
    # epochs it lasts 2 epochs of steps, so after 1 epoch the rate is still rising (warm-up over 50% of
    # a 1-epoch budget would have finished), and after 4 it is full
    steps = len(train)
    lrs = []
    for epochs in (1, 4):
        cfg = TrainConfig(epochs=epochs, planned_epochs=4, batch_size=64)
        trainer = Trainer(build_model(schema, tiny()), cfg, CPU)
        trainer.fit(train)
        lrs.append(trainer.dense_opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(2e-3 * (steps + 1) / (2 * steps), rel=1e-6)
    assert lrs[1] == pytest.approx(2e-3)


def test_spec_file_round_trips_and_names_mistakes(tmp_path):
    schema = _schema()
    spec = spec_dict(schema, time_column="ts")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    loaded, time_column = load_spec(tmp_path / "spec.json")
    assert loaded.signature() == schema.signature() and time_column == "ts"
    import yaml

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert load_spec(tmp_path / "spec.yaml")[0].signature() == schema.signature()
    with pytest.raises(ValueError, match=r"sparse\[0\] \('member_id'\) has unknown key\(s\) \['bucket'\]"):
        schema_from_spec({**spec, "sparse": [{"name": "member_id", "bucket": 3}]})
    with pytest.raises(ValueError, match="kind='hash'"):
        schema_from_spec({**spec, "sparse": [{"name": "member_id", "kind": "hash"}]})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['label'\]"):
        schema_from_spec({**spec, "label": "click"})
    with pytest.raises(ValueError, match="tasks=None"):
        schema_from_spec({k: v for k, v in spec.items() if k != "tasks"})
    (tmp_path / "bad.yaml").write_text("tasks: [click\n")
    with pytest.raises(ValueError, match="is not valid yaml"):
        load_spec(tmp_path / "bad.yaml")

    t = _table()
    pq.write_table(t, tmp_path / "data.parquet")
    ex = user_examples(loaded, data=tmp_path / "data.parquet", time_column="ts")
    assert (ex.train.num_rows, ex.valid.num_rows, ex.test.num_rows) == (280, 40, 80)
    assert ex.train["ts"].to_numpy().max() < ex.test["ts"].to_numpy().min()
    with pytest.raises(ValueError, match=r"the test part is missing column\(s\) \['age'\]"):
        pq.write_table(t.drop_columns(["age"]), tmp_path / "test.parquet")
        user_examples(loaded, train=tmp_path / "data.parquet", test=tmp_path / "test.parquet")


def test_train_job_on_a_users_files(tmp_path):
    from jobs.train_ranker import TrainJobConfig, train

    t = _table(600)
    for name, part in (("train", t.slice(0, 400)), ("valid", t.slice(400, 100)), ("test", t.slice(500))):
        pq.write_table(part, tmp_path / f"{name}.parquet")
    (tmp_path / "spec.json").write_text(json.dumps(spec_dict(_schema(), time_column="ts")))
    metrics = train(
        TrainJobConfig(
            dataset="files",
            spec=str(tmp_path / "spec.json"),
            train_data=str(tmp_path / "train.parquet"),
            valid_data=str(tmp_path / "valid.parquet"),
            test_data=str(tmp_path / "test.parquet"),
            preset="tiny",
            epochs=3,
            batch_size=64,
            export=False,
            out=str(tmp_path / "ranker"),
        )
    )
    assert metrics["train"]["valid_rows"] == 100 and len(metrics["train"]["validation"]) >= 1
    assert metrics["tasks"]["click"]["auc"] > 0.6  # the label is a function of member and item
    ranker = Ranker.load(tmp_path / "ranker")
    assert ranker.schema.field("member_id").has_rare_row and ranker.schema.field("genres").multi
    with pytest.raises(ValueError, match="--dataset files needs --spec"):
        train(TrainJobConfig(dataset="files", out=str(tmp_path / "r2")))


def test_dnn_baseline_trains_on_the_same_batches():
    t = _table(1200)
    schema = _schema().fit(t)
    from ranking.datasets import Examples

    ex = Examples(t.slice(0, 900), t.slice(1000), schema, t.slice(900, 100))
    cfg = TrainConfig(
        epochs=4, batch_size=64, lr=3e-3, sparse_lr=3e-3, sparse_optimizer="adam", embedding_l2=1e-5
    )
    r = train_and_evaluate(ex, tiny(), cfg, CPU, build=build_dnn)
    assert r.metrics["click"]["auc"] > 0.7 and r.train.validation
