"""Alignment model speed on one device: training examples/s and batched scoring candidates/s.

    python -m bench.alignment_device --catalog runs/<demo>/catalog --device cuda
    python -m bench.alignment_device --catalog runs/<demo>/catalog --device cpu --steps 50

Trains the tiny alignment model for --steps on random labels over the catalog's observed keys (speed
does not depend on what it learns), then scores --keys keys x 15 candidates with AlignmentScorer.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--keys", type=int, default=512)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=512, help="pairs per scoring pass")
    args = p.parse_args(argv)

    import pyarrow as pa
    import torch

    from alignment.aggregate import preferences
    from alignment.score import AlignmentScorer
    from alignment.train import AlignmentConfig, train_alignment
    from catalog.build import Catalog
    from catalog.schemas import FEEDBACK_PAIRS
    from catalog.vocabulary import ClusterVocabulary
    from explore.keys import build_key_set

    catalog = Catalog.load(args.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    keys = build_key_set(catalog.histories, catalog.history_k, vocab.size)["history_key"].to_pylist()
    rng = np.random.default_rng(0)
    rows = [
        {"history_key": k, "cluster_id": int(c), "impressions": 5, "clicks": 1, "likes": 0, "shares": 0, "skips": 0,
         "dwell_clicks": 0, "engagement": 0.2, "label": float(rng.integers(0, 11) / 10)}
        for k in keys for c in rng.choice(vocab.size, 8, replace=False)
    ]  # fmt: skip
    pairs = pa.Table.from_pylist(rows, schema=FEEDBACK_PAIRS)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "alignment"
        cfg = AlignmentConfig(max_steps=args.steps, device=args.device)
        report = train_alignment(vocab, pairs, preferences(pairs, 0.2), out, cfg, progress=False)
        scorer = AlignmentScorer(out, device=args.device, batch_size=args.batch_size)
        score_keys = [tuple(k) for k in keys[: args.keys] for _ in range(15)]
        cands = [
            int(c)
            for k in keys[: args.keys]
            for c in rng.choice([c for c in range(vocab.size) if c not in k], 15, False)
        ]
        scorer.score(score_keys, cands)  # warm-up: every batch shape once (CUDA kernels, caches)
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scorer.score(score_keys, cands)
        score_s = time.perf_counter() - t0
    result = {
        "device": str(scorer.device),
        "gpu": torch.cuda.get_device_name() if scorer.device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "train_examples_per_s": report["examples_per_s"],
        "train_steps": report["steps"],
        "score_pairs": len(cands),
        "score_candidates_per_s": round(len(cands) / score_s, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
