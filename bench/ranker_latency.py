"""Scoring latency of a trained ranker checkpoint on a chosen device (what README's GPU table reports).

    python -m jobs.train_ranker --catalog CAT --device cuda --out runs/r_cuda
    python -m bench.ranker_latency runs/r_cuda --device cuda [--reps 50]

Candidates are rows of the checkpoint's examples/test.parquet, taken two ways: the first n rows (as
bench/bench_ranker.py scores them) and one request (row 0's member and history columns broadcast over n
candidate items). Prints the median over --reps timed calls, after warm-up, of Ranker.score end to end,
of the model alone, and of building the features, with the device synchronized around each call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# columns that describe the member and the request, shared by every candidate of one request
REQUEST_COLUMNS = ("member_id", "timestamp", "gender", "occupation", "activity", "age", "member_n_prev",
                   "member_like_rate_prev", "hist_items", "hist_actions")  # fmt: skip


def one_request(test: pa.Table, n: int) -> pa.Table:
    t = test.slice(0, n)
    for c in REQUEST_COLUMNS:
        if c in t.column_names:
            t = t.set_column(t.column_names.index(c), c, pa.array([t[c][0].as_py()] * n, t[c].type))
    return t


def median_ms(fn, sync, reps: int, warm: int = 5) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main(argv: list[str] | None = None) -> None:
    import torch

    from ranking.ranker import Ranker

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a folder written by jobs.train_ranker (with examples/test.parquet)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--reps", type=int, default=50, help="timed calls per figure")
    args = p.parse_args(argv)
    ranker = Ranker.load(args.checkpoint, device=args.device)
    sync = torch.cuda.synchronize if str(ranker.device).startswith("cuda") else (lambda: None)
    test = pq.read_table(f"{args.checkpoint}/examples/test.parquet")
    print(
        f"device {ranker.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.reps} reps"
    )
    for n in (100, 1000):
        for label, cands in (("rows", test.slice(0, n)), ("one request", one_request(test, n))):
            scores = ranker.score(cands)["score"]
            if scores.shape != (n,) or not np.isfinite(scores).all():
                raise RuntimeError(f"n={n} {label}: scores have shape {scores.shape} or are not finite")
            e2e = median_ms(lambda c=cands: ranker.score(c), sync, args.reps)
            batch = ranker.featurizer(cands).to(ranker.device)
            with torch.no_grad():
                model = median_ms(lambda b=batch: ranker.model.run(b), sync, args.reps)
            feat = median_ms(lambda c=cands: ranker.featurizer(c), sync, min(args.reps, 20), warm=2)
            print(
                f"n={n:5d} {label:11s}: Ranker.score {e2e:8.3f} ms | model {model:8.3f} ms | features {feat:8.3f} ms"
            )


if __name__ == "__main__":
    main()
