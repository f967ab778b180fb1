"""The LiRank ranker on this machine: training throughput with achieved GFLOP/s (against a plain matmul
measured in the same run), scoring latency for 100 and 1000 candidates (against the ablation's
baseline model: embeddings + MLP), and embedding memory in float32 vs middle-max int8 and QR vs a
full table."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from catalog.build import build_movielens_catalog
from ranking import Featurizer, Ranker, RankerConfig, TrainConfig, Trainer, build_model, movielens_ctr
from ranking.ablation import baseline_config
from ranking.layers.embeddings import QREmbedding
from ranking.layers.quantization import QuantizedEmbedding, embedding_bytes, quantize_embeddings
from ranking.train import task_loss


def _shape_gflops(m: int, k: int, n: int, seconds: float) -> float:
    """GFLOP/s of one (m, k) @ (k, n) float32 matmul shape: the ceiling of a layer of that shape."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def _train_step_flops(model, batch) -> float:
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model.run(batch)
        task_loss(out.logits, batch.labels, None).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


def _latency_ms(model, batch, reps: int) -> float:
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(3):
            model.run(batch)
        for _ in range(reps):
            t0 = time.perf_counter()
            model.run(batch)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def _member_requests(model, schema, config, test, members: int, reps: int, n: int = 1000) -> dict:
    """One serving request per member: n candidate rows that all carry that member's history, for members
    drawn uniformly from the test part's members, one row of each (its real history length). Ranker.score,
    which cuts the history positions no row fills, against the model run on the whole padded batch,
    alternated request by request in the same run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(0)
    ranker = Ranker(model, schema, config, device="cpu")
    featurizer = Featurizer(schema, with_labels=False)
    base = test.slice(0, n)
    ids = test["member_id"].to_numpy()
    drawn = rng.choice(np.unique(ids), members, replace=False)  # members uniformly, not by rating count
    picked = [int(rng.choice(np.flatnonzero(ids == m))) for m in drawn]
    lengths = np.minimum(pc.list_value_length(test["hist_items"]).to_numpy()[picked], schema.history.length)
    cut_ms, full_ms = [], []
    model.eval()
    for row in picked:
        request = base
        for column in ("hist_items", "hist_actions"):
            one = pa.array([test[column][int(row)].as_py()] * n, test.schema.field(column).type)
            request = request.set_column(request.schema.get_field_index(column), column, one)
        batch = featurizer(request)
        with torch.no_grad():
            for _ in range(reps):
                t0 = time.perf_counter()
                ranker.score(request)
                cut_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                featurizer(request)
                model.run(batch)
                full_ms.append((time.perf_counter() - t0) * 1000)
    cut, full = float(np.mean(cut_ms)), float(np.mean(full_ms))
    return {
        "name": f"ranker_member_request_{n}",
        "value": cut,
        "unit": "ms mean (score call)",
        "baseline": "the same requests, featurized and run padded to the full history length",
        "baseline_value": full,
        "ratio": cut / full,
        "ratio_meaning": "time of a request with unfilled history positions cut over the padded one",
        "detail": {
            "members": members,
            "candidates": n,
            "history_lengths": {
                "mean": float(lengths.mean()),
                "median": float(np.median(lengths)),
                "full_share": float((lengths >= schema.history.length).mean()),
            },
            "reps_per_member": reps,
        },
    }


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    examples = movielens_ctr(build_movielens_catalog())
    schema, config = examples.schema, RankerConfig()
    featurizer = Featurizer(schema)
    rows = []

    # training throughput: Trainer.step (the step fit runs: loss, backward, clipping, both optimizers,
    # warm-up) on pre-featurized batches, so the model's own speed; featurizing is timed below
    n_train = 8_192 if quick else 32_768
    batches = [featurizer(examples.train.slice(s, 512)) for s in range(0, n_train, 512)]
    model = build_model(schema, config)
    flops = _train_step_flops(model, batches[0])
    trainer = Trainer(model, TrainConfig(epochs=1), torch.device("cpu"))
    trainer.warm_up(len(batches))
    t0 = time.perf_counter()
    for b in batches:
        trainer.step(b)
    train_s = time.perf_counter() - t0
    ex_per_s = n_train / train_s
    peak = _shape_gflops(1024, 1024, 1024, 0.5 if quick else 2.0)
    achieved = ex_per_s * flops / 1e9
    rows.append(
        {
            "name": "ranker_train",
            "value": ex_per_s,
            "unit": "examples/s",
            "baseline": "fp32 1024^3 matmul GFLOP/s",
            "baseline_value": peak,
            "ratio": achieved / peak,
            "ratio_meaning": "achieved GFLOP/s over matmul GFLOP/s (FLOP utilisation)",
            "detail": {
                "train_flops_per_example": flops,
                "achieved_gflops": achieved,
                "batch_size": 512,
                "examples": n_train,
                "params": sum(p.numel() for p in model.parameters()),
                "threads": torch.get_num_threads(),
            },
        }
    )

    # scoring latency: the full LiRank model against the ablation baseline, and its int8 copy
    base_model = build_model(schema, baseline_config(config))
    qmodel = quantize_embeddings(model)
    reps = 20 if quick else 100
    for n in (100, 1000):
        batch = featurizer(examples.test.slice(0, n))
        full_ms = _latency_ms(model, batch, reps)
        base_ms = _latency_ms(base_model, batch, reps)
        int8_ms = _latency_ms(qmodel, batch, reps)
        t0 = time.perf_counter()
        for _ in range(10):
            featurizer(examples.test.slice(0, n))
        feat_ms = (time.perf_counter() - t0) / 10 * 1000
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.run(batch)
        fwd_flops = counter.get_total_flops() / n
        score_gflops = fwd_flops * n / (full_ms / 1000) / 1e9
        # TransAct's widest layer, its qkv projection over every (candidate, history token) row: the
        # ceiling a matmul of that thin shape reaches here, against the square matmul's peak
        E, L = model.history.width, batch.inputs()[2].shape[1]
        qkv_shape = _shape_gflops(n * L, E, 3 * E, 0.3 if quick else 1.0)
        rows.append(
            {
                "name": f"ranker_score_{n}",
                "value": full_ms,
                "unit": "ms p50 (model)",
                "baseline": "embeddings + MLP baseline",
                "baseline_value": base_ms,
                "ratio": full_ms / base_ms,
                "ratio_meaning": "latency cost of the LiRank techniques",
                "detail": {
                    "int8_embeddings_ms": int8_ms,
                    "featurize_ms": feat_ms,
                    "forward_flops_per_candidate": fwd_flops,
                    "achieved_gflops": score_gflops,
                    "achieved_over_matmul_peak": score_gflops / peak,
                    "qkv_shape": [n * L, E, 3 * E],
                    "qkv_shape_matmul_gflops": qkv_shape,
                    "qkv_shape_over_matmul_peak": qkv_shape / peak,
                },
            }
        )

    rows.append(
        _member_requests(model, schema, config, examples.test, 10 if quick else 40, 3 if quick else 10)
    )

    # embedding memory: the model's tables, and one field of 1M ids three ways
    f32, i8 = embedding_bytes(model), embedding_bytes(qmodel)
    ids, D = 1_000_000, config.embedding_dim
    qr = QREmbedding(ids, D)
    qr_bytes = sum(t.weight.numel() * 4 for t in (qr.quotient, qr.remainder))
    qr_int8 = sum(QuantizedEmbedding(t.weight).nbytes() for t in (qr.quotient, qr.remainder))
    full_table = ids * D * 4
    full_int8 = ids * (D + 8)
    rows.append(
        {
            "name": "embedding_memory_int8",
            "value": i8,
            "unit": "bytes (model tables)",
            "baseline": "float32 tables",
            "baseline_value": f32,
            "ratio": i8 / f32,
            "ratio_meaning": "int8 size over float32 size",
            "detail": {
                "one_field_1M_ids": {
                    "full_table_float32": full_table,
                    "full_table_int8": full_int8,
                    "qr_float32": qr_bytes,
                    "qr_int8": qr_int8,
                },
                "embedding_dim": D,
            },
        }
    )
    for r in (r for r in rows if r["name"].startswith("ranker_score_")):
        d = r["detail"]
        print(
            f"  {r['name']}: {d['achieved_gflops']:.1f} GFLOP/s = {d['achieved_over_matmul_peak']:.2f} of the "
            f"1024^3 matmul; a matmul of TransAct's qkv shape {d['qkv_shape']} reaches "
            f"{d['qkv_shape_matmul_gflops']:.1f} GFLOP/s = {d['qkv_shape_over_matmul_peak']:.2f} of it"
        )
    print(
        f"  train: {flops / 1e6:.1f} MFLOP/example (fwd+bwd), {achieved:.1f} GFLOP/s achieved vs matmul "
        f"{peak:.1f}; 1M ids x D={D}: full {full_table / 1e6:.0f} MB, int8 {full_int8 / 1e6:.0f} MB, "
        f"QR {qr_bytes / 1e6:.2f} MB, QR int8 {qr_int8 / 1e6:.2f} MB"
    )
    return rows
