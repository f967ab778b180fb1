"""Ranker training throughput against the floors a PyTorch user would measure, in one run:

- `Trainer.fit` (the recipe: both optimizers, clipping, warm-up, the loss as a Python float each step) on
  a cached ExampleStream (featurized once, then reshuffled and sliced each epoch), against a minimal
  PyTorch loop over the same pre-built tensors training the same model (one Adam, no clipping, no
  scheduler): the framework's floor. Goal: >= 0.8 of it. Also the streamed path (featurized on a thread
  every epoch, what every epoch cost before the cache) for context.
- The plain-DNN-sized configuration (the ablation's starting row: embeddings + batch-normed dense + MLP,
  about the size of a CTR library's DNN) through `Trainer.fit` on a cached stream, against a CTR
  library's loop: a torch DataLoader over pre-built arrays (per-example indexing, default collate) at
  batch 1024 training the same model. Goal: >= 1.5x.

Examples/s are steady-state: an untimed first epoch fills the cache (its seconds are reported) and warms
the allocator; the timed epochs follow. Every loop runs on the same threads (`torch.get_num_threads()`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from catalog.build import build_movielens_catalog
from ranking import ExampleStream, Featurizer, RankerConfig, TrainConfig, Trainer, build_model, movielens_ctr
from ranking.ablation import baseline_config
from ranking.train import task_loss

CPU = torch.device("cpu")


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _fit(model, stream, tcfg: TrainConfig, epochs: int) -> float:
    """Examples/s of Trainer.fit over `epochs` epochs after one untimed epoch."""
    trainer = Trainer(model, tcfg.replace(epochs=1), CPU)
    trainer.fit(stream)
    t0 = time.perf_counter()
    result = Trainer(model, tcfg.replace(epochs=epochs), CPU).fit(stream)
    return result.examples_seen / (time.perf_counter() - t0)


def _minimal_loop(model, full, batch_size: int, epochs: int, seed: int = 0) -> float:
    """The floor: pre-built tensors, a permutation per epoch, index_select, forward, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = len(full)
    model.train()

    def epoch(e: int) -> int:
        order = torch.from_numpy(np.random.default_rng(seed + e).permutation(n))
        seen = 0
        for s in range(0, n - 1, batch_size):  # never a 1-row batch (batch norm)
            b = full.select(order[s : s + batch_size])
            loss = task_loss(model.run(b).logits, b.labels, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(b)
        return seen

    epoch(0)
    t0 = time.perf_counter()
    seen = sum(epoch(e) for e in range(1, epochs + 1))
    return seen / (time.perf_counter() - t0)


def _dataloader_loop(model, full, batch_size: int, epochs: int) -> float:
    """A CTR library's loop (FuxiCTR's): the pre-built examples as one integer and one float array, a
    DataLoader over them (per-example indexing, default collate), columns split back into the model's
    inputs per batch, Adam."""
    ints = [full.sparse, full.hist_items, full.hist_actions, full.hist_mask.long(), full.calib]
    widths = np.cumsum([0] + [t.shape[1] for t in ints])
    data = TensorDataset(torch.cat(ints, dim=1), torch.cat([full.dense, full.labels], dim=1))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    n_dense = full.dense.shape[1]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def epoch() -> int:
        seen = 0
        for i, f in loader:
            sparse, hi, ha, hm, calib = (i[:, a:b] for a, b in zip(widths[:-1], widths[1:], strict=True))
            logits = model(sparse, f[:, :n_dense], hi, ha, hm.bool(), calib).logits
            loss = task_loss(logits, f[:, n_dense:], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(i)
        return seen

    epoch()
    t0 = time.perf_counter()
    seen = sum(epoch() for _ in range(epochs))
    return seen / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    examples = movielens_ctr(build_movielens_catalog())
    schema = examples.schema
    train = examples.train.slice(0, 16_384) if quick else examples.train
    epochs = 1 if quick else 2
    rows = []

    # the default preset, its recipe's batch size
    config, tcfg = RankerConfig(), TrainConfig()
    stream = ExampleStream(train, Featurizer(schema), batch_size=tcfg.batch_size, shuffle=True, cache=True)
    t0 = time.perf_counter()
    full = stream.featurized()
    fill_s = time.perf_counter() - t0
    torch.manual_seed(0)
    fit = _fit(build_model(schema, config), stream, tcfg, epochs)
    torch.manual_seed(0)
    floor = _minimal_loop(build_model(schema, config), full, tcfg.batch_size, epochs)
    streamed = ExampleStream(train, Featurizer(schema), batch_size=tcfg.batch_size, shuffle=True, cache=False)
    torch.manual_seed(0)
    stream_rate = _fit(build_model(schema, config), streamed, tcfg, 1)
    rows.append(
        {
            "name": "ranker_fit_default",
            "value": fit,
            "unit": "examples/s",
            "baseline": "minimal PyTorch loop, same model and tensors",
            "baseline_value": floor,
            "ratio": fit / floor,
            "ratio_meaning": "Trainer.fit over the framework's floor (goal >= 0.8)",
            "detail": {
                "params": _params(build_model(schema, config)),
                "batch_size": tcfg.batch_size,
                "rows": len(full),
                "featurize_once_s": fill_s,
                "streamed_examples_per_s": stream_rate,
                "threads": torch.get_num_threads(),
            },
        }
    )

    # the plain-DNN-sized configuration against a CTR library's DataLoader loop
    small = baseline_config(config).replace(mlp_widths=(256, 128, 64))
    base_batch = 1024
    results = {}
    for batch in (base_batch, 4096):
        s = ExampleStream(
            train, Featurizer(schema, history=False), batch_size=batch, shuffle=True, cache=True
        )
        torch.manual_seed(0)
        results[batch] = _fit(build_model(schema, small), s, tcfg.replace(batch_size=batch), epochs)
    plain = Featurizer(schema, history=False)
    full_plain = ExampleStream(train, plain, batch_size=base_batch, cache=True).featurized()
    torch.manual_seed(0)
    loader = _dataloader_loop(build_model(schema, small), full_plain, base_batch, epochs)
    best = max(results.values())
    rows.append(
        {
            "name": "ranker_fit_dnn_sized",
            "value": best,
            "unit": "examples/s",
            "baseline": "DataLoader over pre-built arrays, batch 1024, same model",
            "baseline_value": loader,
            "ratio": best / loader,
            "ratio_meaning": "Trainer.fit on a cached stream over a CTR library's loop (goal >= 1.5)",
            "detail": {
                "params": _params(build_model(schema, small)),
                "mlp_widths": list(small.mlp_widths),
                "examples_per_s_by_batch": {str(k): v for k, v in results.items()},
                "threads": torch.get_num_threads(),
            },
        }
    )
    print(
        f"  featurize once {fill_s:.2f} s for {len(full):,} rows; default preset: fit {fit:,.0f}/s, floor "
        f"{floor:,.0f}/s, streamed {stream_rate:,.0f}/s; DNN-sized ({_params(build_model(schema, small)):,} "
        f"params): fit {', '.join(f'batch {k} {v:,.0f}/s' for k, v in results.items())}, DataLoader {loader:,.0f}/s"
    )
    return rows
