"""Model artifacts and output folders under bad input: a tampered serving.pt2 is refused before anything
in it is unpickled, a ranker config.json with a missing, unknown or mistyped field and a base model
with truncated weights are one clear error (exit 2 from the jobs) with nothing written, and no job
swaps its output in over a folder that is not its own."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from catalog.outputs import check_output_folder
from ranking import Featurizer, Ranker, build_model
from ranking.checkpoint import export_serving, load_serving, read_checkpoint_config, save_checkpoint
from ranking.config import RankerConfig, tiny
from ranking.train import TrainConfig


def _tiny_data(n: int = 8):
    from test_ranking_train import _tiny_data as tiny_ranker_data  # one definition, in the ranker tests

    return tiny_ranker_data(n)


@pytest.fixture(scope="module")
def ranker_ckpt(tmp_path_factory):
    """A tiny ranker checkpoint folder (never trained: only its files matter here)."""
    schema, _ = _tiny_data()
    folder = tmp_path_factory.mktemp("ckpt") / "ranker"
    Ranker(build_model(schema, tiny()), schema, tiny(), device="cpu").save(folder)
    return folder


# --- serving.pt2 -------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the file `marker`: what a crafted archive's pickled entry would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a zip archive entry by entry through edit(name, bytes) -> bytes (or None to drop it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(model, inputs, path) of a real export of a tiny ranker."""
    schema, table = _tiny_data()
    torch.manual_seed(0)
    model = build_model(schema, tiny()).eval()
    inputs = Featurizer(schema, with_labels=False)(table).inputs()
    path = tmp_path_factory.mktemp("export") / "serving.pt2"
    program = export_serving(model, inputs, path)
    return model, inputs, path, program


def test_a_real_export_loads_through_the_checks_and_runs_in_memory(export):
    model, inputs, path, program = export
    with torch.no_grad():
        want = torch.sigmoid(model(*inputs).logits)
        for module in (program.module(), load_serving(path)):
            probs, _ = module(*inputs)
            assert torch.allclose(probs, want, atol=1e-6)


def _edited(edit):
    """A builder (src, dst) that copies the real export through `edit`."""
    return lambda src, dst: _rewrite(src, dst, edit)


def _pickle_a_weight(marker):
    def edit(name, data):
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True  # the first weight: weight_0
            return json.dumps(config).encode()
        return _pickled(_Payload(marker)) if name.endswith("data/weights/weight_0") else data

    return _edited(edit)


def _pickle_the_sample_inputs(marker):
    def edit(name, data):
        return _pickled((_Payload(marker),)) if name.endswith("data/sample_inputs/model.pt") else data

    return _edited(edit)


def _custom_object(marker):
    """A constant stored as a pickled opaque object, as torch.export.save writes non-tensor constants."""

    def edit(name, data):
        if name.endswith("data/constants/model_constants_config.json"):
            meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
            return json.dumps({"config": {"evil": meta}}).encode()
        return data

    def build(src, dst):
        _rewrite(src, dst, edit)
        with zipfile.ZipFile(src) as z:
            root = z.namelist()[0].split("/")[0]
        with zipfile.ZipFile(dst, "a") as z:
            z.writestr(f"{root}/data/constants/opaque_obj_0", _pickled(_Payload(marker)))

    return build


def _legacy_format(marker):
    """The torch 2.7 layout torch.export.load falls back to, which unpickles serialized_state_dict."""

    def build(src, dst):
        with zipfile.ZipFile(src) as z:
            program = z.read(next(n for n in z.namelist() if n.endswith("models/model.json")))
        with zipfile.ZipFile(dst, "w") as z:
            z.writestr("version", "8.0")
            z.writestr("serialized_exported_program.json", program)
            z.writestr("serialized_state_dict.json", _pickled(_Payload(marker)))
            z.writestr("serialized_constants.json", b"")
            z.writestr("serialized_example_inputs.json", b"")

    return build


def _model_json(change):
    def edit(name, data):
        return change(data.decode()).encode() if name.endswith("models/model.json") else data

    return _edited(edit)


def _code_in_a_guard(marker):
    def change(text):
        program = json.loads(text)
        program["guards_code"].append(f"open({str(marker)!r}, 'w') is None")
        return json.dumps(program)

    return _model_json(change)


def _code_in_an_expression(marker):
    def change(text):
        program = json.loads(text)
        expr = next(_find(program, "expr_str"))
        expr["expr_str"] = f"(open({str(marker)!r}, 'w') and {expr['expr_str']})"
        return json.dumps(program)

    return _model_json(change)


def _a_python_callable_in_the_graph(marker):
    def change(text):
        program = json.loads(text)
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
        return json.dumps(program)

    return _model_json(change)


def _find(obj, key):
    """The dicts of a JSON tree that hold `key`."""
    if isinstance(obj, dict):
        if key in obj:
            yield obj
        for v in obj.values():
            yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


@pytest.mark.parametrize(
    "craft, problem",
    [
        (_pickle_a_weight, "as pickled"),
        (_pickle_the_sample_inputs, "needs full unpickling"),
        (_custom_object, "unexpected entry"),
        (_legacy_format, "not under one root folder"),
        (_code_in_a_guard, "shape guard"),
        (_code_in_an_expression, "symbolic expression"),
        (_a_python_callable_in_the_graph, "not an aten operator"),
    ],
)
def test_a_tampered_serving_export_is_refused_before_anything_in_it_runs(export, tmp_path, craft, problem):
    _, _, path, _ = export
    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "serving.pt2"
    craft(marker)(path, crafted)
    with pytest.raises(ValueError, match=problem) as err:
        load_serving(crafted)
    assert str(crafted) in str(err.value) and "Load only exports you made" in str(err.value)
    assert not marker.exists()


def test_an_unpatched_loader_would_have_run_the_payload(export, tmp_path):
    """The crafted file is a real attack: torch.export.load itself runs its payload (which is why
    load_serving checks first and no project path loads serving.pt2)."""
    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "serving.pt2"
    _pickle_a_weight(marker)(export[2], crafted)
    with contextlib.suppress(Exception):  # the payload's return value is no tensor; it ran regardless
        torch.export.load(crafted)
    assert marker.exists()


def test_the_train_job_never_reads_its_export_back():
    """The job checks its export by running the program in memory: neither torch.export.load nor the
    checked loader is on its path."""
    import inspect

    import jobs.train_ranker as job

    source = inspect.getsource(job)
    assert "load_serving" not in source and "torch.export.load" not in source


# --- ranker config.json ------------------------------------------------------------------------------


def _edit_config(src: Path, dst: Path, change) -> Path:
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    change(meta)
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda m: m.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda m: m.pop("ranker"), r"missing field\(s\) \['ranker'\]"),
        (lambda m: m.update(ranker=[1, 2]), "field 'ranker' is \\[1, 2\\], not a JSON object"),
        (
            lambda m: m["ranker"].update(embedding_dim="16"),
            "RankerConfig.embedding_dim='16': must be an integer",
        ),
        (lambda m: m["ranker"].update(mlp_widths=16), "RankerConfig.mlp_widths=16: must be a list"),
        (lambda m: m["ranker"].update(cross_rank_typo=4), r"unknown field\(s\) \['cross_rank_typo'\]"),
        (lambda m: m.update(tasks=["click"]), "tasks \\['click'\\] differ from schema.json's \\['y'\\]"),
        (lambda m: m.update(bandit_task="like"), "bandit_task 'like' is not one of the tasks"),
        (lambda m: m.update(train={"cold_start": 3}), "train.cold_start is 3, not a path"),
    ],
)
def test_a_bad_ranker_config_json_is_one_error_naming_the_file(ranker_ckpt, tmp_path, change, problem):
    bad = _edit_config(ranker_ckpt, tmp_path / "bad", change)
    with pytest.raises(ValueError, match=problem) as err:
        read_checkpoint_config(bad)
    assert str(bad / "config.json") in str(err.value)


def test_a_config_json_that_is_not_an_object_is_named(ranker_ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ranker_ckpt, bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        read_checkpoint_config(bad)


@pytest.mark.parametrize(
    "change, problem",
    [(lambda m: m.pop("ranker"), "missing field"), (lambda m: m.update(note="x"), "unknown field")],
)
def test_train_ranker_warm_start_with_a_bad_config_json_exits_2(
    ranker_ckpt, tmp_path, capsys, change, problem
):
    from jobs.train_ranker import main

    bad = _edit_config(ranker_ckpt, tmp_path / "warm", change)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--warm-start",
                str(bad),
                "--out",
                str(out),
                "--dataset",
                "feedback",
                "--logs",
                str(tmp_path / "no"),
            ]
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(bad / "config.json") in err and problem in err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not out.exists()


def test_config_dataclasses_name_a_mistyped_or_non_object_field():
    with pytest.raises(ValueError, match="RankerConfig: expected an object of fields"):
        RankerConfig.from_dict(["embedding_dim"])
    with pytest.raises(ValueError, match="RankerConfig.gating=1: must be true or false"):
        RankerConfig.from_dict({"gating": 1})
    with pytest.raises(
        ValueError, match="RankerConfig.calibration_range=\\[1.0\\]: must be a list of 2 items"
    ):
        RankerConfig.from_dict({"calibration_range": [1.0]})
    with pytest.raises(ValueError, match="TrainConfig.epochs='2': must be an integer"):
        TrainConfig.from_dict({"epochs": "2"})
    with pytest.raises(ValueError, match="TrainConfig: expected an object of fields"):
        TrainConfig.from_dict("epochs=2")
    # JSON gives lists for tuples and ints where floats are declared: both are fine
    assert RankerConfig.from_dict({"mlp_widths": [8, 4], "calibration_range": [-4, 4]}).mlp_widths == (8, 4)
    assert TrainConfig.from_dict({"lr": 1, "task_weights": [1, 0.5]}).task_weights == (1, 0.5)


# --- truncated base-model weights -------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic catalog folder, a feedback log of explore impressions on it, and a tiny
    causal-LM folder (weights and tokenizer) whose model.safetensors lost its second half."""
    from catalog.build import Catalog
    from catalog.logs import FeedbackLogWriter
    from catalog.synthetic import SyntheticConfig, generate_world
    from catalog.vocabulary import ClusterVocabulary
    from lm.presets import TinyLMConfig, build_tiny

    root = tmp_path_factory.mktemp("world")
    generate_world(root / "catalog", SyntheticConfig(n_members=40, n_clusters=6, n_groups=3, seed=0))
    catalog = Catalog.load(root / "catalog")
    rng = np.random.default_rng(0)
    n, m = 600, catalog.n_clusters
    items, clusters = catalog.item_cluster()
    pick = rng.integers(0, len(items), n)
    first = rng.integers(0, m, n)
    second = (first + rng.integers(1, m, n)) % m  # consecutive clusters of a history differ
    click = rng.random(n) < 0.4
    FeedbackLogWriter(root / "logs").append(
        pa.table(
            {
                "request_id": [f"r{i}" for i in range(n)],
                "member_id": rng.choice(catalog.members["member_id"].to_numpy(), n),
                "timestamp": np.arange(n, dtype=np.int64) + 1_700_000_000_000,
                "history_key": pa.array(
                    [[int(a), int(b)] for a, b in zip(first, second, strict=True)], pa.list_(pa.int32())
                ),
                "item_id": items[pick],
                "cluster_id": pa.array(clusters[pick], pa.int32()),
                "source": ["explore"] * n,
                "position": pa.array(np.zeros(n), pa.int32()),
                "content_type": ["movie"] * n,
                "click": click,
                "like": click & (rng.random(n) < 0.5),
                "share": np.zeros(n, bool),
                "skip": ~click & (rng.random(n) < 0.3),
                "dwell_s": pa.array(np.where(click, 30.0, 0.0), pa.float32()),
            }
        )
    )
    tiny_lm = TinyLMConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1)
    model, tokenizer = build_tiny(ClusterVocabulary.from_clusters(catalog.clusters), tiny_lm)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    weights = root / "base" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return root


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.mark.parametrize("job", ["jobs.train_novelty", "jobs.train_alignment"])
def test_a_base_with_truncated_weights_is_exit_2_with_nothing_written(world, tmp_path, capsys, job):
    base = world / "base"
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = ["--catalog", str(world / "catalog"), "--base", str(base), "--out", str(runs / "out")]
    if job == "jobs.train_novelty":
        argv += ["--no-evaluate", "--max-steps", "1"]
    else:
        argv += ["--logs", str(world / "logs"), "--engine", "pyarrow", "--min-impressions", "1"]
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(job).main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"{base / 'model.safetensors'}: not a readable safetensors file" in err
    assert "truncated or corrupt" in err
    assert _leftovers(runs, "out") == []  # no --out, no staging folder beside it


# --- the output guard --------------------------------------------------------------------------------


def test_the_output_guard_accepts_new_empty_and_own_folders_only(tmp_path):
    assert check_output_folder(tmp_path / "new", ("own.json",), job="jobs.x", what="x") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", ("own.json",), job="jobs.x", what="x")
    own = tmp_path / "own"
    own.mkdir()
    (own / "own.json").write_text("{}")
    (own / "weights.bin").write_bytes(b"")
    check_output_folder(own, ("own.json",), job="jobs.x", what="x")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "part-000000.parquet").write_bytes(b"")
    check_output_folder(logs, ("part-*.parquet",), job="jobs.simulate", what="feedback log")
    (own / "own.json").unlink()
    with pytest.raises(ValueError) as err:
        check_output_folder(own, ("own.json", "model/own.json"), job="jobs.x", what="x model", flag="--out")
    msg = str(err.value)
    assert (
        f"--out {own} holds files but no x model (own.json or model/own.json): it holds weights.bin." in msg
    )
    assert "Give a new or empty folder, or an earlier output of jobs.x." in msg
    with pytest.raises(NotADirectoryError, match="--out names a file; jobs.x writes a folder there"):
        check_output_folder(own / "weights.bin", ("own.json",), job="jobs.x", what="x")


def _notes(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    return folder


def _hf_like(tmp_path: Path) -> Path:
    """A folder with a config.json that is not a ranker checkpoint (e.g. a novelty model)."""
    folder = tmp_path / "novelty"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "novelty.json").write_text("{}")
    return folder


JOBS = [
    ("jobs.train_novelty", ["--catalog", "{world}/catalog", "--no-evaluate"], "novelty model"),
    (
        "jobs.train_alignment",
        ["--catalog", "{world}/catalog", "--logs", "{world}/logs", "--engine", "pyarrow"],
        "alignment job output",
    ),
    (
        "jobs.sample_novelty",
        ["--catalog", "{world}/catalog", "--model", "{world}/none"],
        "novelty candidates",
    ),
    ("jobs.build_catalog", ["--n-clusters", "4", "--n-groups", "2"], "catalog"),
    ("jobs.synthesize", ["--members", "10", "--clusters", "6", "--groups", "3"], "catalog"),
    ("jobs.simulate", ["--catalog", "{world}/catalog"], "feedback log"),
    ("jobs.ablate_ranker", ["--dataset", "feedback", "--logs", "{world}/none"], "ablation"),
    ("jobs.train_ranker", ["--dataset", "feedback", "--logs", "{world}/none"], "ranker checkpoint"),
    (
        "jobs.best_of_n",
        ["--catalog", "{world}/catalog", "--novelty", "{world}/none", "--alignment", "{world}/none"],
        "best-of-n output",
    ),
]


@pytest.mark.parametrize("job, argv, what", JOBS, ids=[j[0] for j in JOBS])
def test_every_job_refuses_an_out_that_is_not_its_own(world, tmp_path, capsys, job, argv, what):
    out = _notes(tmp_path)
    argv = [a.format(world=world) for a in argv] + ["--out", str(out)]
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(job).main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"--out {out} holds files but no {what}" in err and "it holds notes.txt" in err
    assert f"an earlier output of {job}" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert _leftovers(tmp_path, "mine") == ["mine"]


def test_train_ranker_refuses_a_model_folder_with_a_config_json(world, tmp_path, capsys):
    """A config.json alone (any Hugging Face folder has one) does not make a folder a ranker checkpoint."""
    from jobs.train_ranker import main

    out = _hf_like(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", "feedback", "--logs", str(world / "none"), "--out", str(out)])
    assert exit_.value.code == 2
    assert "holds files but no ranker checkpoint (schema.json)" in capsys.readouterr().err
    assert (out / "novelty.json").exists()


def test_library_swaps_refuse_a_folder_that_is_not_theirs(ranker_ckpt, tmp_path):
    from alignment.train import train_alignment
    from explore.sft import train_novelty

    out = _notes(tmp_path)
    schema, _ = _tiny_data()
    with pytest.raises(ValueError, match=r"folder .*mine holds files but no ranker checkpoint"):
        save_checkpoint(out, build_model(schema, tiny()), schema, tiny())
    with pytest.raises(ValueError, match=r"out .*mine holds files but no novelty model \(novelty.json\)"):
        train_novelty(None, None, out)
    with pytest.raises(ValueError, match=r"out .*mine holds files but no alignment model \(alignment.json\)"):
        train_alignment(None, None, None, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # their own earlier output is fine: a checkpoint saved over a checkpoint
    save_checkpoint(ranker_ckpt, build_model(schema, tiny()), schema, tiny())
    assert read_checkpoint_config(ranker_ckpt)[0].tasks == ("y",)
