"""How cost grows with the input: the feedback aggregation (the alignment model's training pairs) over
10^5, 10^6 and 10^7 logged impressions, time and peak memory per size, with the fitted exponent of
each (time ~ rows^a, memory ~ rows^b: the goal is a ~ 1, linear, and b ~ 0, flat, i.e. streaming).

The logs are synthetic FEEDBACK_LOG parts of 100,000 rows (a part is the unit both engines read): 2,000
clusters, K = 2, key clusters and shown clusters drawn from a Zipf law (exponent 1.2), so the number of
distinct (key, cluster) pairs keeps growing with the rows, as in real traffic.
Each size is aggregated in a fresh process (its peak resident memory is that run's alone) with the
pyarrow engine at its defaults (logs above 16 MiB are added up in hash partitions spilled to disk, which
is what keeps memory flat); the baseline is reading the same parts with pyarrow (the I/O floor), in the same
process. Quick mode stops at 10^6.

Then the main job over 10^2, 10^3 and 10^4 history keys of a synthetic world (main_job_growth: a fresh
job process per size, wall time, stage times and the peak memory of its process tree, fitted exponents;
quick mode: 100 and 300 keys). The full run takes about 35 min on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
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


def _tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (the job, its Ray processes, its Redis)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            pass
    return total


def _run_sampled(argv: list[str], env: dict, log: Path) -> tuple[float, int]:
    """Runs argv to the end, its output into `log` (a pipe nobody reads until the end fills up and stalls
    the child: it did at 10^4 keys); (wall seconds, peak resident bytes of its process tree, sampled every
    0.2 s)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                peak = max(peak, _tree_rss(proc))
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if child.returncode:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {child.returncode}:\n{log.read_text()[-3000:]}")
    return wall, peak


SYNTH_CLUSTERS, SYNTH_MEMBERS = 120, 5_000  # 120 x 119 = 14,280 ordered cluster pairs: room for 10^4 keys


def main_job_growth(quick: bool) -> dict:
    """The main job (`python -m jobs.best_of_n`, a fresh process per size, its own Ray and Redis) over
    10^2, 10^3 and 10^4 history keys (quick: 100 and 300) of a synthetic world (catalog.synthetic: 120
    clusters in 12 groups, 5,000 members), keys drawn without repetition from its 120 x 119 ordered cluster
    pairs; tiny models trained on that world (100 SFT steps; the alignment model of bench best-of-n),
    n = 20, 4 slots: wall time, the job's own stage times (summary.json) and the peak resident memory of
    its process tree."""
    import pyarrow as pa

    from bench.bench_best_of_n import speed_models
    from catalog import Catalog, SyntheticConfig, generate_world
    from catalog.vocabulary import ClusterVocabulary

    sizes = [100, 300] if quick else [100, 1000, 10_000]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_world(
            tmp / "world", SyntheticConfig(n_members=SYNTH_MEMBERS, n_clusters=SYNTH_CLUSTERS, n_groups=12)
        )
        catalog = Catalog.load(tmp / "world")
        vocab = ClusterVocabulary.from_clusters(catalog.clusters)
        pairs = [(a, b) for a in range(vocab.size) for b in range(vocab.size) if a != b]
        order = np.random.default_rng(0).permutation(len(pairs))
        speed_models(catalog, vocab, tmp, quick)
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
        for size in sizes:
            keys = tmp / f"keys-{size}.parquet"
            pq.write_table(pa.table({"history_key": [list(pairs[i]) for i in order[:size]]}), keys)
            out = tmp / f"job-{size}"
            wall, peak = _run_sampled(
                [sys.executable, "-m", "jobs.best_of_n", "--catalog", str(tmp / "catalog"), "--novelty",
                 str(tmp / "novelty"), "--alignment", str(tmp / "alignment"), "--keys", str(keys), "--out",
                 str(out), "--n", "20", "--slots", "4", "--force"],
                env,
                tmp / f"job-{size}.log",
            )  # fmt: skip
            s = json.loads((out / "summary.json").read_text())
            r = {"keys": size, "wall_s": wall, "peak_tree_bytes": peak, "job_wall_s": s["wall_s"],
                 "run_s": s["run_s"], "publish_s": s["publish_s"], "stage_busy_s": s["stage_busy_s"],
                 "keys_cached": s["keys_cached"]}  # fmt: skip
            results.append(r)
            print(
                f"  main job {size:>6,} keys: {wall:7.1f} s wall ({size / wall:.2f} keys/s; job {s['wall_s']:.1f} s, "
                f"Ray Data run {s['run_s']:.1f} s, publish {s['publish_s']:.2f} s, busy {s['stage_busy_s']}), "
                f"peak {peak / 2**20:,.0f} MiB over its processes",
                flush=True,
            )
    xs = [r["keys"] for r in results]
    time_exp = _exponent(xs, [r["wall_s"] for r in results])
    work_exp = _exponent(xs, [sum(r["stage_busy_s"].values()) for r in results])
    mem_exp = _exponent(xs, [r["peak_tree_bytes"] for r in results])
    print(
        f"  fitted: wall ~ keys^{time_exp:.2f} (start-up included), stage busy time ~ keys^{work_exp:.2f}, "
        f"peak memory ~ keys^{mem_exp:.2f}"
    )
    last = results[-1]
    return {
        "name": "main_job_cost_growth",
        "value": last["keys"] / last["wall_s"],
        "unit": f"keys/s at {last['keys']:,}",
        "baseline": f"the same job at {results[0]['keys']:,} keys",
        "baseline_value": results[0]["keys"] / results[0]["wall_s"],
        "ratio": (last["keys"] / last["wall_s"]) / (results[0]["keys"] / results[0]["wall_s"]),
        "ratio_meaning": "keys/s at the largest size over the smallest (start-up amortised)",
        "detail": {"sizes": results, "wall_exponent": time_exp, "busy_exponent": work_exp,
                   "memory_exponent": mem_exp},
    }  # fmt: skip


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
        },
        main_job_growth(quick),
    ]
