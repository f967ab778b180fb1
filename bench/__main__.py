"""Benchmark runner: `python -m bench [NAME ...] [--quick]` (or `make bench`).

Each benchmark measures its subject and a baseline in the same run and reports both, with their
ratio; the runner prints a table and writes bench/results/<timestamp>.json with the machine's
description, rewritten after each benchmark. A benchmark that fails is recorded with its error and the
others still run; the runner then exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from bench.machine import describe
from catalog.io import write_json

BENCHMARKS = {
    "catalog": "bench.bench_catalog",
    "synthetic": "bench.bench_synthetic",
    "redis": "bench.bench_redis",
    "sim": "bench.bench_sim",
    "ranker": "bench.bench_ranker",
    "ranker-quality": "bench.bench_ranker_quality",
    "ranker-train": "bench.bench_ranker_train",
    "cost-growth": "bench.bench_cost_growth",
    "incremental": "bench.bench_incremental",
    "novelty": "bench.bench_novelty",
    "best-of-n": "bench.bench_best_of_n",
    "alignment-ceiling": "bench.bench_alignment_ceiling",
    "serve": "bench.bench_serve",
}
RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record")
    args = p.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    machine = describe()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"gpu={machine['gpu']}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    results, failed = [], []
    for name in names:
        t0 = time.perf_counter()
        try:
            rows = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not lose the others' results
            failed.append(name)
            rows = [{"name": name, "error": f"{type(exc).__name__}: {exc}"}]
            traceback.print_exc()
        for r in rows:
            r["benchmark"] = name
            r["wall_s"] = round(time.perf_counter() - t0, 2)
            results.append(r)
            if "error" in r:
                print(f"{name:<30} FAILED: {r['error']}", flush=True)
                continue
            print(
                f"{r['name']:<30} {_fmt(r['value']):>12} {r['unit']:<20} baseline ({r['baseline']}): "
                f"{_fmt(r['baseline_value'])}  ratio {r['ratio']:.2f}",
                flush=True,
            )
        # rewritten after every benchmark, so a crash or an interrupt later keeps what was measured
        write_json({"machine": machine, "quick": args.quick, "results": results}, path)
    print(f"wrote {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
