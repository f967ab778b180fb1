"""How cost grows with the input: the feedback aggregation (the alignment model's training pairs) over
10^5, 10^6 and 10^7 logged impressions, time and peak memory per size, with the fitted exponent of
each (time ~ rows^a, memory ~ rows^b: the goal is a ~ 1, linear, and b ~ 0, flat, i.e. streaming).

The logs are synthetic FEEDBACK_LOG parts of 100,000 rows (a part is the unit both engines read): 2,000
clusters, K = 2, key clusters and shown clusters drawn from a Zipf law (exponent 1.2), so the number of
distinct (key, cluster) pairs keeps growing with the rows, as in real traffic.
Each size is aggregated in a fresh process (its peak resident memory is that run's alone) with the
pyarrow engine; the baseline is reading the same parts with pyarrow (the I/O floor), in the same
process. Quick mode stops at 10^6.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalog.schemas import FEEDBACK_LOG

N_CLUSTERS, K, PART_ROWS = 2_000, 2, 100_000

CHILD = """
import json, sys, time
import pyarrow.parquet as pq
from alignment.aggregate import AggregationConfig, aggregate_logs
from catalog.feedback import log_files
folder, k, n_clusters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
for f in log_files([folder]):
    pq.read_table(f)
read_s = time.perf_counter() - t0
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = hwm()
t0 = time.perf_counter()
agg = aggregate_logs([folder], k, n_clusters, AggregationConfig(engine="pyarrow"))
print(json.dumps({"seconds": time.perf_counter() - t0, "read_s": read_s, "peak_bytes": hwm(),
                  "peak_before_bytes": base, "pairs": agg.pairs.num_rows, "events": agg.stats["events"]}))
"""


def _write_logs(folder: Path, rows: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, N_CLUSTERS + 1) ** 1.2
    zipf /= zipf.sum()
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        key = rng.choice(N_CLUSTERS, (n, K), p=zipf).astype(np.int32)
        cluster = rng.choice(N_CLUSTERS, n, p=zipf).astype(np.int32)
        click = rng.random(n) < 0.2
        table = pa.table(
            {
                "request_id": pa.array([f"r{start + i}" for i in range(n)]),
                "member_id": rng.integers(1, 1_000_000, n),
                "timestamp": start + np.arange(n, dtype=np.int64),
                "history_key": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, (n + 1) * K, K, dtype=np.int32)), pa.array(key.ravel())
                ),
                "item_id": rng.integers(1, 40_000, n),
                "cluster_id": cluster,
                "source": np.where(rng.random(n) < 0.3, "explore", "exploit"),
                "position": rng.integers(0, 10, n).astype(np.int32),
                "content_type": np.full(n, "movie"),
                "click": click,
                "like": click & (rng.random(n) < 0.4),
                "share": click & (rng.random(n) < 0.05),
                "skip": ~click & (rng.random(n) < 0.1),
                "dwell_s": np.where(click, rng.exponential(30, n), 0).astype(np.float32),
            },
            schema=FEEDBACK_LOG,
        )
        pq.write_table(table, folder / f"part-{part:06d}.parquet")


def _exponent(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def run(quick: bool = False) -> list[dict]:
    sizes = [10**5, 10**6] if quick else [10**5, 10**6, 10**7]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, rows in enumerate(sizes):
            folder = Path(tmp) / f"logs-{rows}"
            t0 = time.perf_counter()
            _write_logs(folder, rows, seed=i)
            gen_s = time.perf_counter() - t0
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(folder), str(K), str(N_CLUSTERS)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r |= {"rows": rows, "generate_s": gen_s}
            results.append(r)
            print(
                f"  aggregation {rows:>10,} rows: {r['seconds']:7.2f} s ({rows / r['seconds']:,.0f} rows/s), peak "
                f"{r['peak_bytes'] / 2**20:,.0f} MiB (imports {r['peak_before_bytes'] / 2**20:,.0f} MiB), "
                f"{r['pairs']:,} pairs; reading the parts {r['read_s']:.2f} s",
                flush=True,
            )
    xs = [r["rows"] for r in results]
    time_exp = _exponent(xs, [r["seconds"] for r in results])
    extra = [max(r["peak_bytes"] - r["peak_before_bytes"], 1) for r in results]
    mem_exp = _exponent(xs, extra)
    last = results[-1]
    print(f"  fitted: time ~ rows^{time_exp:.2f}, memory above the imports ~ rows^{mem_exp:.2f}")
    return [
        {
            "name": "aggregation_cost_growth",
            "value": last["rows"] / last["seconds"],
            "unit": f"rows/s at {last['rows']:,}",
            "baseline": "reading the same parts with pyarrow",
            "baseline_value": last["rows"] / last["read_s"],
            "ratio": last["read_s"] / last["seconds"],
            "ratio_meaning": "aggregation speed over the read floor",
            "detail": {"sizes": results, "time_exponent": time_exp, "memory_exponent": mem_exp},
        }
    ]
