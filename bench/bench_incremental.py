"""Incremental training (LiRank section 3.9) on MovieLens CTR split into two periods by time: period 2
trained from the period-1 model with the Fisher-weighted prior, against period 2 trained from scratch
and against warm start without the prior, all evaluated on the same later test part."""

from __future__ import annotations

import torch

from catalog.build import build_movielens_catalog
from ranking import ExampleStream, Featurizer, IncrementalPrior, TrainConfig, empirical_fisher, movielens_ctr
from ranking.config import RankerConfig, tiny
from ranking.datasets import Examples
from ranking.experiment import train_and_evaluate

CPU = torch.device("cpu")


def run(quick: bool = False) -> list[dict]:
    ex = movielens_ctr(build_movielens_catalog())
    half = ex.train.num_rows // 2
    p1 = Examples(ex.train.slice(0, half), ex.test, ex.schema)
    p2 = Examples(ex.train.slice(half), ex.test, ex.schema)
    config = tiny() if quick else RankerConfig()
    tcfg = TrainConfig(epochs=1 if quick else 2)
    first = train_and_evaluate(p1, config, tcfg, CPU)
    fisher = empirical_fisher(
        first.model,
        ExampleStream(p1.train, Featurizer(ex.schema), batch_size=512, cache=False),
        tcfg.fisher_batches,
        CPU,
    )
    fisher_mean = float(sum(v.sum() for v in fisher.values()) / sum(v.numel() for v in fisher.values()))
    w1 = {k: v.detach().clone().float() for k, v in first.model.state_dict().items()}
    results = {}
    # lambda_f = N_old / N_new (1 here) weighs the previous period like its own data; larger values
    # hold the weights closer (period 1 is both the cold-start model w0 and the previous model here)
    for name, lam, alpha in (
        ("warm start, no prior", 0.0, 0.0),
        ("incremental lambda_f=1", 1.0, 0.5),
        ("incremental lambda_f=100", 100.0, 0.5),
    ):
        prior = IncrementalPrior(w1, fisher, w1, fisher, alpha, lam)
        tc = TrainConfig(epochs=tcfg.epochs, forgetting_factor=lam, cold_weight=alpha)
        results[name] = train_and_evaluate(p2, config, tc, CPU, prior=prior).metrics["like"]
    scratch = train_and_evaluate(p2, config, tcfg, CPU).metrics["like"]
    full = train_and_evaluate(ex, config, tcfg, CPU).metrics["like"]
    inc = results["incremental lambda_f=1"]
    sweep = ", ".join(f"{k} {v['auc']:.4f}" for k, v in results.items())
    print(
        f"  AUC on the test part: period 1 only {first.metrics['like']['auc']:.4f}, period 2 from scratch "
        f"{scratch['auc']:.4f}, {sweep}, both periods at once {full['auc']:.4f}; "
        f"mean diagonal Fisher of the period-1 model {fisher_mean:.2e}"
    )
    return [
        {
            "name": "incremental_training_auc",
            "value": inc["auc"],
            "unit": "AUC",
            "baseline": "period 2 from scratch",
            "baseline_value": scratch["auc"],
            "ratio": inc["auc"] / scratch["auc"],
            "ratio_meaning": "AUC over the from-scratch AUC",
            "detail": {
                "period1_auc": first.metrics["like"]["auc"],
                **{f"{k}_auc": v["auc"] for k, v in results.items()},
                "both_periods_auc": full["auc"],
                "fisher_mean": fisher_mean,
                "incremental_logloss": inc["logloss"],
                "scratch_logloss": scratch["logloss"],
            },
        }
    ]
