"""The alignment scorer as a Ray Data stage: a callable class that loads its model once per actor.

    ds.map_batches(AlignmentStage, fn_constructor_kwargs={"model": DIR}, batch_format="pyarrow",
                   concurrency=1, num_cpus=0.5, num_gpus=0.5 where CUDA is present)

Input batches need `history_key` and `candidates` (NOVELTY_CANDIDATES rows); each row gains `scores`
(list<float32>): the model's P(engage) of each candidate, in the candidates' order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alignment.score import AlignmentScorer

REQUIRED_COLUMNS = ("history_key", "candidates")


class AlignmentStage:
    def __init__(
        self, model: str, device: str = "auto", batch_size: int = 256, catalog_signature: str | None = None
    ):
        self.scorer = AlignmentScorer(model, device=device, batch_size=batch_size)
        signature = self.scorer.vocab.signature()
        if catalog_signature is not None and catalog_signature != signature:
            raise ValueError(
                f"alignment model={model!r} was trained on other clusters than the catalog's (signature "
                f"{signature} vs {catalog_signature}). Retrain it on this catalog."
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        missing = [c for c in REQUIRED_COLUMNS if c not in batch.column_names]
        if missing:
            raise ValueError(
                f"AlignmentStage: batch lacks column(s) {missing}; present: {batch.column_names}. "
                "Feed NOVELTY_CANDIDATES rows (history_key, candidates, ...)."
            )
        keys = batch["history_key"].to_pylist()
        cands = batch["candidates"].to_pylist()
        flat_keys = [tuple(k) for k, cs in zip(keys, cands, strict=True) for _ in cs]
        flat = [c for cs in cands for c in cs]
        probs = self.scorer.score(flat_keys, flat) if flat else np.empty(0)
        bounds = np.cumsum([0] + [len(cs) for cs in cands])
        scores = [
            probs[a:b].astype(np.float32).round(5).tolist()
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return batch.append_column("scores", pa.array(scores, pa.list_(pa.float32())))
