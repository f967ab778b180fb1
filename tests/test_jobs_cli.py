"""The job commands as a user runs them: exit codes, summaries, one-paragraph errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env=None, timeout=180):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "module",
    [
        "jobs.demo",
        "jobs.build_catalog",
        "jobs.synthesize",
        "jobs.simulate",
        "jobs.train_novelty",
        "jobs.sample_novelty",
        "jobs.build_retrieval",
        "jobs.export_movielens_ctr",
        "jobs.train_alignment",
        "jobs.best_of_n",
        "jobs.cache",
        "jobs.serve",
        "jobs.join_feedback",
        "jobs.loop",
        "jobs.report",
    ],
)
def test_help(module):
    res = _run([module, "--help"])
    assert res.returncode == 0 and "usage:" in res.stdout


def test_build_catalog_job_writes_a_complete_folder(tmp_path):
    res = _run(
        ["jobs.build_catalog", "--out", str(tmp_path / "cat"), "--n-clusters", "16", "--n-groups", "4"]
    )
    assert res.returncode == 0, res.stderr
    assert "1682 items in 16 clusters (4 groups)" in res.stdout
    manifest = json.loads((tmp_path / "cat" / "manifest.json").read_text())
    assert manifest["counts"]["clusters"] == 16

    res = _run(
        [
            "jobs.simulate",
            "--catalog",
            str(tmp_path / "cat"),
            "--out",
            str(tmp_path / "log"),
            "--policy",
            "random",
            "--slate-size",
            "5",
            "--explore-slots",
            "1",
        ]
    )
    assert res.returncode == 0, res.stderr
    assert "random" in res.stdout and "explore slots" in res.stdout
    log = pq.read_table(tmp_path / "log" / "part-000000.parquet")
    assert 4 * manifest["counts"]["histories"] < log.num_rows <= 5 * manifest["counts"]["histories"]
    res = _run(["jobs.simulate", "--catalog", str(tmp_path / "nope"), "--out", str(tmp_path / "log")])
    assert res.returncode == 2 and "manifest.json is missing" in res.stderr


def test_missing_data_package_is_one_paragraph_and_exit_2(tmp_path):
    old = tmp_path / "cat"  # a previous catalog in the output folder survives the failed build
    old.mkdir()
    (old / "manifest.json").write_text('{"counts": {}}')
    (old / "items.parquet").write_bytes(b"old items")
    res = _run(["jobs.build_catalog", "--out", str(old)], env={"ML100K_DIR": str(tmp_path / "none")})
    assert res.returncode == 2
    assert res.stderr.startswith("error: MovieLens-100K file") and "recbole" in res.stderr
    assert "Traceback" not in res.stderr
    assert (old / "manifest.json").read_text() == '{"counts": {}}'
    assert (old / "items.parquet").read_bytes() == b"old items"


def _job_error(main, argv, capsys) -> str:
    """Run a job's main in-process; it must exit 2 with a one-paragraph error. Returns stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_config_and_path_errors_name_the_flag_and_the_fix(tmp_path, capsys):
    from jobs import simulate, synthesize

    err = _job_error(simulate.main, [], capsys)  # --catalog and --out are required
    assert (
        "--catalog (config field 'catalog'): Field required\n--out (config field 'out'): Field required"
        in err
    )
    assert "See --help" in err and "pydantic.dev" not in err
    err = _job_error(synthesize.main, ["--members", "0"], capsys)
    assert "--members (config field 'members'): Input should be greater than or equal to 1 (got 0)" in err
    cfg = tmp_path / "c.json"
    for text in ("[1, 2]", "null"):
        cfg.write_text(text)
        err = _job_error(synthesize.main, ["--config", str(cfg)], capsys)
        assert f"--config {cfg}: holds a JSON" in err and "not an object of fields" in err
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile, afile / "sub"):
        err = _job_error(synthesize.main, ["--out", str(out), "--members", "10"], capsys)
        assert f"{out}:" in err and "--out must name a folder you can write to" in err
    assert afile.read_text() == "not a folder"


def test_bad_config_value_names_the_field(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("n_clusters = 1\n")
    res = _run(["jobs.build_catalog", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "n_clusters" in res.stderr and "Traceback" not in res.stderr
    cfg.write_text("n_clustres = 10\n")  # a typo is refused, not ignored
    res = _run(["jobs.build_catalog", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert res.returncode == 2 and "n_clustres" in res.stderr


def test_synthesize_job(tmp_path):
    res = _run(
        [
            "jobs.synthesize",
            "--out",
            str(tmp_path / "w"),
            "--members",
            "2000",
            "--clusters",
            "50",
            "--groups",
            "5",
        ]
    )
    assert res.returncode == 0, res.stderr
    assert "2000 members, 50 clusters" in res.stdout and (tmp_path / "w" / "manifest.json").exists()
    size = sum(f.stat().st_size for f in (tmp_path / "w").glob("*.parquet"))
    assert f"{size / 1e6:,.1f} MB of parquet" in res.stdout and "peak RSS" in res.stdout


def test_bench_runner_keeps_results_when_a_benchmark_fails(tmp_path, monkeypatch, capsys):
    import types

    import bench.__main__ as runner

    row = {"name": "fine", "value": 2.0, "unit": "x/s", "baseline": "b", "baseline_value": 1.0, "ratio": 2.0}

    def broken(quick):
        raise RuntimeError("tool missing")

    monkeypatch.setattr(runner, "describe", lambda: {"cpu": "c", "cores": 1, "memory_gib": 1, "gpu": None})
    monkeypatch.setattr(runner, "BENCHMARKS", {"ok": "fake_ok", "broken": "fake_broken"})
    monkeypatch.setitem(sys.modules, "fake_ok", types.SimpleNamespace(run=lambda quick: [dict(row)]))
    monkeypatch.setitem(sys.modules, "fake_broken", types.SimpleNamespace(run=broken))
    assert runner.main(["broken", "ok", "--out", str(tmp_path)]) == 1
    (path,) = tmp_path.glob("*.json")
    results = json.loads(path.read_text())["results"]
    assert [(r["benchmark"], r.get("error")) for r in results] == [
        ("broken", "RuntimeError: tool missing"),
        ("ok", None),
    ]
    assert "broken" in capsys.readouterr().out


def test_demo_with_unreachable_redis_url_fails_cleanly(tmp_path):
    res = _run(
        ["jobs.demo", "--runs", str(tmp_path)], env={"REDIS_URL": f"redis://127.0.0.1:{_dead_port()}/0"}
    )
    assert res.returncode == 2, res.stderr
    assert "does not answer" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One small `python -m jobs.demo` run: (its CompletedProcess, its runs folder)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    res = _run(
        [
            "jobs.demo",
            "--runs",
            str(tmp_path),
            "--num-cpus",
            "2",
            "--novelty-steps",
            "40",
            "--novelty-eval-examples",
            "40",
            "--traffic-rounds",
            "6",
            "--alignment-steps",
            "20",
            "--key-limit",
            "120",
            "--ranker-preset",
            "tiny",  # the default preset's code paths, at test size (its speed is bench ranker's)
            "--ranker-epochs",
            "1",
            "--loop-members",
            "80",
            "--loop-alignment-steps",
            "5",
        ],
        env={"RAY_ADDRESS": ""},
        timeout=900,
    )
    return res, tmp_path


@pytest.mark.slow
def test_demo_runs_end_to_end(demo):
    res, tmp_path = demo
    assert res.returncode == 0, res.stdout + res.stderr
    assert "a Ray worker read the run folder back" in res.stdout
    (run,) = [p for p in tmp_path.iterdir() if p.name != "latest"]
    assert (tmp_path / "latest").resolve() == run.resolve()  # what `make serve` serves
    summary = json.loads((run / "summary.json").read_text())
    assert summary["catalog"]["items"] == 1682 and summary["services"]["redis"]["started_here"]
    assert (run / "catalog" / "manifest.json").exists()
    for policy in ("random", "most-frequent"):
        assert summary["round0"][policy]["impressions"] > 5000
        assert (run / "logs" / "round0" / policy / "part-000000.parquet").exists()
    for name, tasks in (
        ("movielens", ["like"]),
        ("feedback", ["click", "like", "share", "skip", "long_dwell"]),
    ):
        ranker = summary["ranker"][name]
        assert list(ranker["auc"]) == tasks
        assert ranker["auc"][tasks[0]] > ranker["popularity_auc"][tasks[0]]
        for f in ("config.json", "schema.json", "model.safetensors", "fisher.safetensors", "serving.pt2"):
            assert (run / "ranker" / name / f).exists()
    novelty = summary["novelty"]
    assert novelty["heldout_loss"][1] < novelty["heldout_loss"][0]
    assert novelty["evaluation"]["validity_constrained"] == 1.0
    sampled = novelty["sampling"]
    assert sampled["keys"] == 120 < summary["catalog"]["coverage"]["distinct_keys"]  # --key-limit
    assert sampled["samples"] == 20 * sampled["keys"] and sampled["valid_share"] == 1.0
    assert list((run / "candidates" / "candidates").glob("*.parquet"))
    aligned = summary["alignment"]
    assert aligned["aggregation"]["pairs_kept"] > 100 and aligned["aggregation"]["quarantined"] == 0
    assert aligned["model"]["steps"] == 20 and aligned["model"]["evaluation"]["model"]["auc"] is not None
    assert (run / "alignment" / "model" / "alignment.json").exists()
    bon = summary["best_of_n"]
    assert bon["keys"] == sampled["keys"] == bon["keys_cached"] and bon["mean_selected"] == 4.0
    assert bon["entries"] == bon["keys"] + bon["backoff_entries"] and bon["version"]
    assert set(summary["round1"]) == {"random", "most-frequent", "novelty-only", "best-of-n"}
    r1 = {name: r["impressions"] for name, r in summary["round1"].items()}
    assert r1["random"] > 3000 and r1["most-frequent"] > 3000, r1
    assert r1["best-of-n"] > 1000, r1  # the cache backs off for the keys --key-limit left out
    assert r1["novelty-only"] > 0, r1  # only members whose key was sampled get novel clusters
    assert "cache lookups for" in res.stdout and "'backoff': 0," not in res.stdout  # unsampled keys back off
    assert bon["samples_per_key"] == 32 and (run / "redis" / "dump.rdb").is_file()
    # one round of the loop through the endpoint over HTTP: the round's feedback went through POST /feedback
    # and the join, every served item, nothing set aside
    (round1,) = summary["loop"]
    assert round1["slates"] == 80 and round1["served_by"]["cache_version"] == bon["version"]
    assert round1["rates"]["explore"]["impressions"] > 100 and round1["latency_ms"]["p99"] > 0
    assert not any(round1["feedback"]["quarantined"].values())
    assert round1["feedback"]["feedback_rows"] == round1["rates"]["impressions"]
    assert list((run / "logs" / "serving" / "events").glob("part-*.parquet"))
    assert round1["ranker_cold"]["train_s"] > 0 and (run / "loop" / "round-01" / "ranker-cold").is_dir()
    check_report(run)
    # quiet by default: vLLM's and Ray's output in the run's library log, not on the terminal
    library = run / "logs" / "library.log"
    assert f"library output (vLLM, Ray, transformers) in {library}" in res.stdout
    text = library.read_text()
    assert "Resolved architecture" in text and "(MapWorker(MapBatches(TimedNoveltyStage))" in text
    chatter = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if any(s in line for s in (" INFO ", " WARNING ", "(MapWorker", "(raylet)", "FutureWarning"))
    ]
    assert not chatter, chatter[:5]


@pytest.mark.slow
def test_the_loop_closes_through_the_endpoint(demo):
    """Two loop rounds on the demo's run (its first, and one more here): traffic over HTTP, feedback through POST /feedback and the join,
    the alignment model warm-started, a new cache version published, the ranker retrained incrementally and
    hot-reloaded; the second round is served by the first round's cache version and ranker."""
    res, tmp_path = demo
    assert res.returncode == 0, res.stdout + res.stderr
    run = (tmp_path / "latest").resolve()
    out = _run(
        ["jobs.loop", "--run", str(run), "--rounds", "1", "--members", "80", "--alignment-steps", "5",
         "--key-limit", "120", "--num-cpus", "2", "--no-comparisons"],
        env={"RAY_ADDRESS": ""},
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    first, second = (
        json.loads((run / "loop" / f"round-{r:02d}" / "summary.json").read_text()) for r in (1, 2)
    )
    demo_summary = json.loads((run / "summary.json").read_text())
    assert first["served_by"]["ranker"] == str(run / "ranker" / "feedback")
    assert (
        second["served_by"]["cache_version"]
        == first["cache"]["version"]
        != demo_summary["best_of_n"]["version"]
    )
    assert second["served_by"]["ranker"] == str(run / "loop" / "round-01" / "ranker")
    assert second["ranker"]["version"] != first["ranker"]["version"]
    for s in (first, second):
        assert s["slates"] == 80 and not any(s["feedback"]["quarantined"].values())
        assert s["feedback"]["feedback_rows"] == s["rates"]["impressions"] > 0
        assert s["alignment"]["warm_start"] and s["alignment"]["steps"] == 5
    assert first["alignment"]["warm_start"] == str(run / "alignment" / "model")
    assert second["alignment"]["warm_start"] == str(run / "loop" / "round-01" / "alignment" / "model")
    # round 2's alignment saw all explore feedback so far: the demo's traffic and both rounds' logs
    pairs_1 = first["alignment"]["evaluation"]["heldout_pairs"]
    assert second["alignment"]["evaluation"]["heldout_pairs"] >= pairs_1
    assert (run / "loop" / "round-02" / "ranker" / "fisher.safetensors").is_file()
    # round 1's incremental and cold rankers, scored on round 2's traffic (which neither trained on)
    assert first["previous_rankers_on_this_traffic"] is None
    nxt = second["previous_rankers_on_this_traffic"]
    assert set(nxt) == {"incremental", "cold"} and all(0 < v["click"] < 1 for v in nxt.values())
    report = check_report(run)
    assert [r["round"] for r in report["ranker"]["rounds"]] == [1, 2]
    assert (
        report["ranker"]["rounds"][0]["next_round"] == nxt
        and report["ranker"]["rounds"][1]["next_round"] is None
    )
    assert {"best-of-32, round 1", "best-of-32, round 2"} <= set(report["operating_curve"]["points"])
    # the loop's report numbers come from its logs: recompute round 1's explore like rate from them
    from catalog.logs import read_feedback_log

    log = read_feedback_log(run / "loop" / "round-01" / "feedback").to_pylist()
    explore = [r for r in log if r["source"] == "explore"]
    assert first["rates"]["explore"]["impressions"] == len(explore)
    assert first["rates"]["explore"]["like"] == pytest.approx(sum(r["like"] for r in explore) / len(explore))


def check_report(run):
    """The run's report exists and its operating curve is recomputed here from the answered impressions it
    kept (report/curve/<policy>/); returns report.json."""
    from catalog import Catalog
    from catalog.logs import read_feedback_log

    out = run / "report"
    for f in ("report.md", "operating-curve.png", "report.json", "ranker-reliability.png"):
        assert (out / f).is_file(), f
    report = json.loads((out / "report.json").read_text())
    catalog = Catalog.load(run / "catalog")
    history = dict(zip(*(catalog.histories[c].to_pylist() for c in ("member_id", "clusters")), strict=True))
    points = report["operating_curve"]["points"]
    for name in ("random", "most-frequent", "novelty LLM (n=1)", "best-of-2", "best-of-32", "oracle"):
        p = points[name]
        rows = [
            r for r in read_feedback_log(out / "curve" / p["log"]).to_pylist() if r["source"] == "explore"
        ]
        novel = [r for r in rows if r["cluster_id"] not in history[r["member_id"]]]
        assert p["impressions"] == len(rows) > 0 and p["novel_impressions"] == len(novel), name
        assert p["novelty"] == pytest.approx(len(novel) / len(rows)), name
        assert p["like_novel"] == pytest.approx(sum(r["like"] for r in novel) / len(novel)), name
        assert p["like"] == pytest.approx(sum(r["like"] for r in rows) / len(rows)), name
        assert f"| {name} | {p['novelty']:.3f} ± " in (out / "report.md").read_text()
    # random and the oracle show only new clusters; the plain next-cluster predictor mostly seen ones; the
    # oracle, who knows the members, beats random by far
    assert points["random"]["novelty"] == points["oracle"]["novelty"] == 1.0
    assert points["most-frequent"]["novelty"] < 0.9
    assert points["oracle"]["like_novel"] > points["random"]["like_novel"] + 0.1
    # the alignment model against the global-rate scorer on the same samples, paired over members
    paired = report["operating_curve"]["paired"]["best-of-32 minus best-of-32, global-rate scorer"]
    shown = [  # the members each policy showed an explore slot (a cluster whose items they all rated shows none)
        {r["member_id"] for r in read_feedback_log(out / "curve" / points[name]["log"]).to_pylist()
         if r["source"] == "explore"}
        for name in ("best-of-32", "best-of-32, global-rate scorer")
    ]  # fmt: skip
    assert paired["members"] == len(shown[0] & shown[1]) > 0
    assert 0 < paired["like_novel_members"] <= paired["members"]
    assert -1 <= paired["like_novel_diff"] <= 1 and paired["like_novel_diff_ci"] >= 0
    assert "| best-of-32 minus best-of-32, global-rate scorer |" in (out / "report.md").read_text()
    return report


QUIET_SCRIPT = """
import logging, os, sys, warnings
from jobs.quiet import library_output, terminal_stderr
lib = logging.getLogger("somelib")  # a library's handler, made at import time, on stderr
lib.addHandler(logging.StreamHandler())
lib.setLevel(logging.INFO)
with library_output(sys.argv[1], verbose=sys.argv[2] == "1") as log:
    print("[stage] ...", flush=True)
    lib.info("library INFO line")
    warnings.warn("library FutureWarning", FutureWarning)
    os.write(2, b"C-level fd-2 line\\n")
    with terminal_stderr():
        print("our progress bar", file=sys.stderr)
    print("vllm stream", os.environ.get("VLLM_LOGGING_STREAM"), flush=True)
    if sys.argv[3] == "1":
        raise RuntimeError("stage failed")
print("log", log, "stream after", os.environ.get("VLLM_LOGGING_STREAM"))
"""


def _quiet(log, verbose: bool, fail: bool):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_STREAM"}
    return subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT, str(log), str(int(verbose)), str(int(fail))],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_goes_to_the_log_unless_verbose(tmp_path, verbose):
    log = tmp_path / "logs" / "library.log"
    res = _quiet(log, verbose, fail=False)
    assert res.returncode == 0, res.stderr
    assert "[stage] ..." in res.stdout and "our progress bar" in res.stderr  # ours stay on the terminal
    chatter = ("library INFO line", "library FutureWarning", "C-level fd-2 line")
    if verbose:
        assert all(c in res.stderr for c in chatter) and not log.exists()
        assert "log None stream after None" in res.stdout
    else:
        text = log.read_text()
        assert all(c in text for c in chatter) and not any(c in res.stderr for c in chatter), res.stderr
        assert "our progress bar" not in text and "[stage]" not in text
        assert "vllm stream ext://sys.stderr" in res.stdout  # vLLM's log off stdout inside the block
        assert f"log {log} stream after None" in res.stdout  # the environment restored after it


RAY_QUIET_SCRIPT = """
import logging, sys, time
import ray
from jobs.quiet import library_output, route_ray_worker_output, terminal_stderr
from jobs.services import ray_session

@ray.remote(num_cpus=0.5)
def chatty():
    print("worker stdout line", flush=True)
    logging.getLogger("replica").warning("worker WARNING line")
    return 1

with library_output(sys.argv[1]) as log, ray_session(num_cpus=1):
    print("routed", route_ray_worker_output(), flush=True)
    with terminal_stderr():  # our progress bar is on the terminal while a worker prints
        print("our progress bar", file=sys.stderr)
        ray.get(chatty.remote())
        deadline = time.time() + 30
        while "worker WARNING line" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
print("done")
"""


def test_ray_worker_lines_reach_the_log_also_inside_terminal_stderr(tmp_path):
    """A Ray worker's output is forwarded by a driver thread that writes to `sys.stderr`: while a stage's
    progress bar has that on the terminal (terminal_stderr), the lines must still go to the library log."""
    log = tmp_path / "library.log"
    res = subprocess.run(
        [sys.executable, "-c", RAY_QUIET_SCRIPT, str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "routed True" in res.stdout and "done" in res.stdout and "our progress bar" in res.stderr
    text = log.read_text()
    assert "worker stdout line" in text and "worker WARNING line" in text
    terminal = res.stdout + res.stderr
    assert "worker stdout line" not in terminal and "worker WARNING line" not in terminal, terminal


def test_library_output_shows_the_error_on_the_terminal(tmp_path):
    log = tmp_path / "library.log"
    res = _quiet(log, verbose=False, fail=True)
    assert res.returncode == 1
    assert "RuntimeError: stage failed" in res.stderr and "Traceback" in res.stderr
    assert f"library output (vLLM, Ray, transformers) of this run: {log}" in res.stderr
    assert "C-level fd-2 line" in log.read_text() and "C-level fd-2 line" not in res.stderr
