"""Ranker quality against the plain baselines a CTR library ships, on MovieLens-100K CTR (like = rating
>= 4, all 100,000 ratings), the same features for every model (ids, age, gender, occupation, zip
prefix, release decade, genres as a multi-valued field, the last 10 rated items with their ratings),
the same splits, the same seeds, in one run:

- 'global-time': one time cut (last 20% test, the 10% before it validation); most test members are
  unseen in training, like real new members.
- 'member-time': each member's last 20% of ratings is test, the 10% before it validation.

Models: the LiRank default preset with its recipe (ranking.TrainConfig defaults: Adagrad on ids, Adam,
warm-up, early stopping with the best epoch restored); the DNN baseline (ranking.baseline: embeddings +
3 x 400 MLP, mean-pooled history, L2 on embeddings, Adam, early stopping: FuxiCTR's DNN); logistic
regression (the same inputs through one linear layer). Each row's value is the LiRank mean over the
seeds, the baseline the DNN's; 'unseen' rows are the test rows of members absent from training.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from catalog.build import build_movielens_catalog
from catalog.movielens import load_movielens_100k
from ranking import RankerConfig, TrainConfig
from ranking.baseline import DNNBaseline, build_dnn
from ranking.datasets import movielens_ctr
from ranking.experiment import train_and_evaluate
from ranking.metrics import auc, logloss

SPLITS = ("global-time", "member-time")
HISTORY = 10
BATCH = 1024
MAX_EPOCHS = 8


def models() -> dict:
    """name -> (build, TrainConfig without seed)."""
    lirank = TrainConfig(epochs=MAX_EPOCHS, batch_size=BATCH)
    adam = TrainConfig(
        epochs=MAX_EPOCHS,
        batch_size=BATCH,
        lr=1e-3,
        sparse_lr=1e-3,
        sparse_optimizer="adam",
        embedding_l2=1e-4,
        warmup_fraction=0.0,
    )
    lr_build = lambda schema, config: DNNBaseline(schema, dim=1, widths=(), history=True)  # noqa: E731
    # a linear model needs a larger step and more passes to converge (at 1e-3 it was still improving at 8)
    linear = adam.replace(lr=1e-2, sparse_lr=1e-2, epochs=4 * MAX_EPOCHS)
    return {"lirank": (None, lirank), "dnn": (build_dnn, adam), "logistic": (lr_build, linear)}


def _scores(y, p, unseen) -> dict:
    out = {"auc": auc(y, p), "logloss": logloss(y, p)}
    if unseen.any():
        out |= {"unseen_auc": auc(y[unseen], p[unseen]), "unseen_logloss": logloss(y[unseen], p[unseen])}
    return out


def run(quick: bool = False) -> list[dict]:
    seeds = (0,) if quick else (0, 1, 2)
    catalog = build_movielens_catalog()
    ratings = load_movielens_100k().interactions
    config = RankerConfig()
    device = torch.device("cpu")
    rows = []
    for split in SPLITS:
        examples = movielens_ctr(
            catalog, interactions=ratings, split=split, features="standard", history_length=HISTORY
        )
        train_members = np.unique(examples.train["member_id"].to_numpy())
        unseen = ~np.isin(examples.test["member_id"].to_numpy(), train_members)
        results: dict[str, list[dict]] = {}
        for name, (build, tcfg) in models().items():
            if quick and name == "logistic":
                continue
            for seed in seeds:
                t0 = time.perf_counter()
                r = train_and_evaluate(examples, config, tcfg.replace(seed=seed), device, build=build)
                y, p = r.predictions["labels"][:, 0], r.predictions["probs"][:, 0]
                s = _scores(y, p, unseen) | {
                    "seed": seed,
                    "best_epoch": r.train.best_epoch,
                    "epochs_run": len(r.train.validation),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                results.setdefault(name, []).append(s)
                print(
                    f"  {split} {name} seed {seed}: AUC {s['auc']:.4f} logloss {s['logloss']:.4f}"
                    + (
                        f" unseen AUC {s['unseen_auc']:.4f} logloss {s['unseen_logloss']:.4f}"
                        if unseen.any()
                        else ""
                    )
                    + f" (best epoch {s['best_epoch']} of {s['epochs_run']}, {s['seconds']} s)",
                    flush=True,
                )
        mean = {
            n: {k: float(np.mean([r[k] for r in rs])) for k in rs[0] if k != "seed"}
            for n, rs in results.items()
        }
        detail = {
            "seeds": list(seeds),
            "rows": {
                "train": examples.train.num_rows,
                "valid": examples.valid.num_rows,
                "test": examples.test.num_rows,
            },
            "unseen_test_share": float(unseen.mean()),
            "mean": mean,
            "per_seed": results,
        }
        metrics = ["auc", "logloss"] + (["unseen_auc", "unseen_logloss"] if unseen.any() else [])
        for m in metrics:
            lower_better = "logloss" in m
            rows.append(
                {
                    "name": f"ranker_quality_{split}_{m}",
                    "value": mean["lirank"][m],
                    "unit": m.replace("_", " ") + " (mean)",
                    "baseline": "DNN: embeddings + MLP, mean-pooled history, L2, early stop",
                    "baseline_value": mean["dnn"][m],
                    "ratio": mean["lirank"][m] / mean["dnn"][m],
                    "ratio_meaning": "LiRank over DNN "
                    + ("(below 1 is better)" if lower_better else "(above 1 is better)"),
                    "detail": detail if m == "auc" else {"logistic": mean.get("logistic", {}).get(m)},
                }
            )
    return rows
