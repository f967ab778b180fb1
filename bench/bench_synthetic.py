"""Synthetic world generation rate, against writing the same number of random interaction rows
(the parquet I/O ceiling) in the same run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.io import ParquetStreamWriter
from catalog.schemas import INTERACTIONS
from catalog.synthetic import SyntheticConfig, generate_world


def run(quick: bool = False) -> list[dict]:
    cfg = SyntheticConfig(n_members=50_000 if quick else 250_000, n_clusters=2_000, n_groups=50)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = generate_world(Path(tmp) / "world", cfg)
        gen_s = time.perf_counter() - t0
        rows = manifest["counts"]["interactions"]

        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        with ParquetStreamWriter(Path(tmp) / "io.parquet", INTERACTIONS) as w:
            for lo in range(0, rows, 2_000_000):
                n = min(2_000_000, rows - lo)
                w.write(
                    pa.table(
                        {
                            "member_id": rng.integers(1, cfg.n_members, n),
                            "item_id": rng.integers(1, 40_000, n),
                            "rating": rng.integers(1, 6, n).astype(np.float32),
                            "timestamp": np.sort(rng.integers(1.6e9, 1.7e9, n)),
                        }
                    )
                )
        io_s = time.perf_counter() - t0
    return [
        {
            "name": "synthetic_generation",
            "value": rows / gen_s,
            "unit": "interaction rows/s",
            "baseline": "writing as many random interaction rows (I/O only)",
            "baseline_value": rows / io_s,
            "ratio": (rows / gen_s) / (rows / io_s),
            "detail": {
                "members": cfg.n_members,
                "clusters": cfg.n_clusters,
                "interactions": rows,
                "generate_s": gen_s,
                "io_only_s": io_s,
            },
        }
    ]
