"""Self-describing ranker checkpoints: a folder of safetensors weights and JSON, loadable from the
folder alone (no pickle), plus an export of the serving model with torch.export.

<folder>/
  config.json         CheckpointConfig: format and format_version, RankerConfig, the TrainConfig fields
                      and the cold start (incremental training), the tasks, the bandit's task
  schema.json         the fitted FeatureSchema (vocabularies, imputation values, long-dwell tables)
  model.safetensors   weights and buffers
  fisher.safetensors  diagonal empirical Fisher (the next incremental period: ranking.incremental), optional
  bandit.safetensors  Bayesian last-layer posterior, optional
  metrics.json        evaluation figures, optional
  serving.pt2         torch.export program of the serving forward, optional

`save_checkpoint` builds the folder beside its destination and swaps it in whole, so no file of an
older checkpoint (an old bandit, Fisher or export) survives next to the new weights; it refuses a
destination that holds files but no checkpoint (catalog.outputs), which the swap would delete.

serving.pt2 is for serving stacks that run torch.export programs (AOTInductor, ExecuTorch). Nothing
in this project loads it: the endpoint scores with model.safetensors + JSON, and the train job checks
the export by running the program in memory before saving it. A .pt2 file is code: torch.export.load
unpickles entries the archive marks as pickled, and compiles its shape guards and symbolic expressions
as Python. `load_serving` therefore refuses, before torch reads a byte, any archive that is not the
shape torch.export.save gives this model (pickled weights or constants, custom objects, unknown
entries, sample inputs that need more than torch.load(weights_only=True), operators outside aten,
guards or expressions outside their small grammar). Still: load only exports you made.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from catalog.io import replace_folder, staging_folder
from catalog.outputs import check_output_folder
from ranking.bandit import BayesianLastLayer
from ranking.config import RankerConfig
from ranking.model import LiRankModel, build_model
from ranking.schema import FeatureSchema

FORMAT = "lirank-ranker"
FORMAT_VERSION = 1  # config.json's layout: raise it when the layout changes, and keep reading the older ones
LEGACY_FORMATS = {"lirank-ranker/1": 1}  # written before format_version: the version was in the format
OPTIONAL_FILES = ("fisher.safetensors", "bandit.safetensors", "metrics.json", "serving.pt2")
# what marks a folder as a ranker checkpoint (an HF model folder has a config.json too, never a schema.json)
OWN_FILES = ("schema.json",)
# config.json's top level
CONFIG_KEYS = ("format", "format_version", "ranker", "train", "tasks", "bandit_task")


@dataclass(frozen=True)
class CheckpointConfig:
    """config.json, typed: what a checkpoint folder records besides its schema and tensors."""

    ranker: RankerConfig  # the architecture
    tasks: tuple[str, ...]  # the schema's tasks, in order
    train: dict  # the TrainConfig fields it was trained with, and 'cold_start' (ranking.incremental)
    bandit_task: str | None = None  # the task bandit.safetensors models; None without a bandit
    format_version: int = FORMAT_VERSION

    @property
    def cold_start(self) -> str | None:
        """The cold-start checkpoint this one was trained from (itself when trained from scratch)."""
        return self.train.get("cold_start")

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "ranker": self.ranker.to_dict(),
            "train": self.train,
            "tasks": list(self.tasks),
            "bandit_task": self.bandit_task,
        }


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(folder: str | os.PathLike, *args, **kwargs) -> Path:
    """Write the checkpoint into a new folder built beside `folder`, then swap it in for `folder` (whose
    other contents go with the old checkpoint). The other arguments are those of `write_checkpoint`.
    A `folder` that holds files but no checkpoint is refused (ValueError): the swap would delete them."""
    check_output_folder(
        folder, OWN_FILES, job="ranking.save_checkpoint", what="ranker checkpoint", flag="folder"
    )
    tmp = staging_folder(folder)
    try:
        write_checkpoint(tmp, *args, **kwargs)
        return replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint(
    folder: str | os.PathLike,
    model: LiRankModel,
    schema: FeatureSchema,
    config: RankerConfig,
    *,
    train_config: dict | None = None,
    fisher: dict[str, torch.Tensor] | None = None,
    bandit: BayesianLastLayer | None = None,
    bandit_task: str | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write the checkpoint files into `folder` as it is (for a folder the caller stages itself);
    optional files left there by an older checkpoint and not written now are deleted."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in OPTIONAL_FILES:
        (folder / name).unlink(missing_ok=True)
    _save_tensors(model.state_dict(), folder / "model.safetensors")
    if fisher is not None:
        _save_tensors(fisher, folder / "fisher.safetensors")
    if bandit is not None:
        _save_tensors(bandit.state_dict(), folder / "bandit.safetensors")
    if metrics is not None:
        _write_json(folder / "metrics.json", metrics)
    _write_json(folder / "schema.json", schema.to_dict())
    info = CheckpointConfig(config, tuple(schema.tasks), train_config or {}, bandit_task)
    _write_json(folder / "config.json", info.to_dict())
    return folder


def read_checkpoint_config(folder: str | os.PathLike) -> tuple[CheckpointConfig, RankerConfig, FeatureSchema]:
    """(config.json as a CheckpointConfig, its RankerConfig, the FeatureSchema), each checked: a field
    that is missing, unknown or of the wrong kind, or a format_version newer than this code reads, is a
    ValueError naming the file, not a traceback later. Files written before format_version (format
    'lirank-ranker/1') read as version 1."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a ranker checkpoint: config.json is missing.")
    fix = "restore the folder, or retrain the checkpoint with this code (python -m jobs.train_ranker)"
    try:
        meta = json.loads(cfg_path.read_text())
        schema = FeatureSchema.from_dict(json.loads((folder / "schema.json").read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: corrupt or incomplete checkpoint ({exc!r}); {fix}.") from exc
    except (ValueError, AttributeError) as exc:  # schema.json with a field of the wrong kind
        raise ValueError(f"{folder / 'schema.json'}: {exc}; {fix}.") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_path}: holds a JSON {type(meta).__name__}, not an object; {fix}.")
    legacy = meta.get("format") in LEGACY_FORMATS and "format_version" not in meta
    if meta.get("format") != FORMAT and not legacy:
        raise ValueError(f"{cfg_path}: format {meta.get('format')!r}, this code reads {FORMAT!r}; {fix}.")
    missing = [k for k in CONFIG_KEYS if k not in meta and not (legacy and k == "format_version")]
    unknown = sorted(set(meta) - set(CONFIG_KEYS))
    if missing or unknown:
        problems = [f"missing field(s) {missing}"] if missing else []
        problems += [f"unknown field(s) {unknown}"] if unknown else []
        raise ValueError(
            f"{cfg_path}: {'; '.join(problems)}. A checkpoint's config.json holds exactly the fields "
            f"{list(CONFIG_KEYS)}; {fix}."
        )
    version = LEGACY_FORMATS[meta["format"]] if legacy else meta["format_version"]
    if type(version) is not int or version < 1:
        raise ValueError(f"{cfg_path}: format_version is {version!r}, not a positive integer; {fix}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path}: format_version {version} is newer than this code reads (up to {FORMAT_VERSION}): "
            "the checkpoint was written by a later version of the project. Load it with that version, or "
            "retrain the checkpoint with this code (python -m jobs.train_ranker)."
        )
    kinds = {"ranker": dict, "train": dict, "tasks": list}
    for key, kind in kinds.items():
        if not isinstance(meta[key], kind):
            raise ValueError(
                f"{cfg_path}: field '{key}' is {meta[key]!r}, not a JSON {'object' if kind is dict else 'array'}; "
                f"{fix}."
            )
    if meta["tasks"] != list(schema.tasks):
        raise ValueError(
            f"{cfg_path}: tasks {meta['tasks']} differ from schema.json's {list(schema.tasks)}; {fix}."
        )
    if meta["bandit_task"] is not None and meta["bandit_task"] not in schema.tasks:
        raise ValueError(
            f"{cfg_path}: bandit_task {meta['bandit_task']!r} is not one of the tasks {list(schema.tasks)}; {fix}."
        )
    cold_start = meta["train"].get("cold_start")
    if cold_start is not None and not isinstance(cold_start, str):
        raise ValueError(f"{cfg_path}: train.cold_start is {cold_start!r}, not a path; {fix}.")
    try:
        config = RankerConfig.from_dict(meta["ranker"])
    except ValueError as exc:
        raise ValueError(f"{cfg_path}, field 'ranker': {exc} Fix the field or {fix}.") from exc
    info = CheckpointConfig(config, tuple(meta["tasks"]), meta["train"], meta["bandit_task"], version)
    return info, config, schema


def load_model(
    folder: str | os.PathLike, *, data_schema: FeatureSchema | None = None
) -> tuple[LiRankModel, FeatureSchema, RankerConfig, CheckpointConfig]:
    """Rebuild the model from the folder alone; refuse data whose schema has another structure."""
    folder = Path(folder)
    info, config, schema = read_checkpoint_config(folder)
    if data_schema is not None:
        schema.check_compatible(data_schema, what=f"checkpoint {folder}")
    model = build_model(schema, config)
    state = load_tensors(folder / "model.safetensors")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ValueError(
            f"{folder}/model.safetensors does not match config.json and schema.json: {exc}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{folder}/model.safetensors does not match config.json: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}."
        )
    return model.eval(), schema, config, info


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint folder is incomplete; retrain or restore it."
        )
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type on a corrupt or truncated file
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); retrain or restore it.") from exc


VERSIONED_FILES = ("config.json", "schema.json", "model.safetensors", "bandit.safetensors")


def checkpoint_version(folder: str | os.PathLike) -> str:
    """A content hash of what scoring reads (config, schema, weights, bandit posterior): 16 hex digits.
    Two folders with the same files have the same version; any change to them gives another."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in VERSIONED_FILES:
        path = folder / name
        if not path.is_file():
            if name == "bandit.safetensors":
                continue
            raise FileNotFoundError(f"{path} is missing: {folder} is not a complete ranker checkpoint.")
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def load_bandit(folder: str | os.PathLike) -> BayesianLastLayer | None:
    path = Path(folder) / "bandit.safetensors"
    return BayesianLastLayer.from_state_dict(load_tensors(path)) if path.is_file() else None


class ServingModule(torch.nn.Module):
    """What serving runs: inputs -> (calibrated probabilities (B, T), last-layer inputs (B, T, H))."""

    def __init__(self, model: LiRankModel):
        super().__init__()
        self.model = model

    def forward(self, sparse, dense, hist_items, hist_actions, hist_mask, calib):
        out = self.model(sparse, dense, hist_items, hist_actions, hist_mask, calib)
        return torch.sigmoid(out.logits), out.phi


def export_serving(
    model: LiRankModel, example_inputs: tuple[torch.Tensor, ...], path: str | os.PathLike
) -> torch.export.ExportedProgram:
    """torch.export the serving forward with a dynamic batch size, save it at `path` as a .pt2 archive
    and return the program (run `.module()` on it to check the export without reading the file back)."""
    module = ServingModule(model.eval())
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = tuple({0: batch} for _ in example_inputs)
    program = torch.export.export(module, example_inputs, dynamic_shapes=dynamic)
    torch.export.save(program, str(path))
    return program


# What torch.export.save writes for one program of tensors (under the archive's root folder).
_PT2_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/constants/model_constants_config\.json"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/model\.pt)"
)
_TOKEN = re.compile(
    r"\s+|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<string>'[^']*')|\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    r"|==|!=|<=|>=|\*\*|//|[-+*/%<>()\[\],.=]"
)
# the names a shape guard ("L['x'].size()[0] == L['y'].size()[0]") may use
_GUARD_NAMES = frozenset({"L", "and", "or", "not", "size", "stride", "storage_offset", "dim"})
# the names a symbolic expression ("Symbol('s2', positive=True, integer=True)") may use, besides symbols
_EXPR_NAMES = frozenset(
    {
        "Symbol", "Integer", "True", "False", "positive", "integer", "nonnegative", "real", "finite", "Max",
        "Min", "Abs", "Mod", "PythonMod", "FloorDiv", "CeilDiv", "CleanDiv", "ModularIndexing", "Eq", "Ne",
        "Lt", "Le", "Gt", "Ge", "FloorToInt", "CeilToInt", "TruncToInt", "IntTrueDiv", "PowByNatural",
    }
)  # fmt: skip
_SYMBOL = re.compile(r"[a-z]\d+")


def _in_grammar(text: str, names: frozenset, string: re.Pattern) -> bool:
    """True when `text` is made only of numbers, operators, the given names (or symbols like s0) and
    strings matching `string`: Python that can compare shapes but call nothing else."""
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            return False
        pos = m.end()
        if m.group("name") and m.group("name") not in names and not _SYMBOL.fullmatch(m.group("name")):
            return False
        if m.group("string") and not string.fullmatch(m.group("string")[1:-1]):
            return False
    return pos == len(text)


def _walk(obj, key: str):
    """Every value stored under `key` anywhere in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def check_serving_archive(path: str | os.PathLike) -> bytes:
    """The bytes of a serving.pt2 archive, read once, after checking that loading it unpickles nothing
    and compiles no Python beyond shape guards; a ValueError naming the file and the entry otherwise."""
    path = Path(path)
    data = path.read_bytes()

    def refuse(problem: str):
        raise ValueError(
            f"{path}: {problem}. Refused before loading: torch.export.load would unpickle or run what the "
            "archive holds. Load only exports you made; re-export it with ranking.checkpoint.export_serving "
            "(python -m jobs.train_ranker writes serving.pt2)."
        )

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        refuse(f"not a torch.export archive ({exc})")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        refuse(f"entries {names[:5]} are not under one root folder, as torch.export.save writes them")
    root = roots.pop()
    for n in names:
        if not _PT2_ENTRY.fullmatch(n[len(root) + 1 :]):
            refuse(f"unexpected entry {n!r} (a pickled object, another format or another program)")

    def read_json(entry: str):
        try:
            return json.loads(archive.read(f"{root}/{entry}"))
        except (KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            refuse(f"entry {root}/{entry} is missing or not JSON ({exc})")

    for entry, prefix in (
        ("data/weights/model_weights_config.json", "weight_"),
        ("data/constants/model_constants_config.json", "tensor_"),
    ):
        config = read_json(entry)
        items = config.get("config") if isinstance(config, dict) else None
        if not isinstance(items, dict):
            refuse(f"entry {root}/{entry} has no 'config' object")
        for fqn, meta in items.items():
            if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                refuse(f"{root}/{entry} marks {fqn!r} as pickled (use_pickle true)")
            name = meta.get("path_name")
            if (
                not (isinstance(name, str) and re.fullmatch(rf"{prefix}\d+", name))
                or meta.get("tensor_meta") is None
            ):
                refuse(f"{root}/{entry} stores {fqn!r} as {name!r}, not as raw tensor bytes")
    program = read_json("models/model.json")
    if not isinstance(program, dict):
        refuse(f"entry {root}/models/model.json is not a JSON object")
    for target in _walk(program, "target"):
        if not (
            isinstance(target, str) and re.fullmatch(r"torch\.ops\.aten\.\w+\.\w+|_operator\.\w+", target)
        ):
            refuse(f"the graph calls {target!r}, not an aten operator")
    for guard in program.get("guards_code") or []:
        if not (isinstance(guard, str) and _in_grammar(guard, _GUARD_NAMES, re.compile(r"[A-Za-z_]\w*"))):
            refuse(f"shape guard {str(guard)[:80]!r} is not a comparison of input sizes")
    for expr in _walk(program, "expr_str"):
        if not (isinstance(expr, str) and _in_grammar(expr, _EXPR_NAMES, _SYMBOL)):
            refuse(f"symbolic expression {str(expr)[:80]!r} is not an arithmetic of shape symbols")
    sample = f"{root}/data/sample_inputs/model.pt"
    if sample in names and archive.read(sample):
        try:  # torch tries weights_only=True first and falls back to full unpickling: make sure it need not
            inputs = torch.load(io.BytesIO(archive.read(sample)), weights_only=True)
        except Exception as exc:  # the weights-only unpickler's refusal, whatever its type
            refuse(f"entry {sample} needs full unpickling ({type(exc).__name__})")
        if not isinstance(inputs, (tuple, dict)):
            refuse(f"entry {sample} holds a {type(inputs).__name__}, not sample inputs")
    return data


def load_serving(path: str | os.PathLike):
    """The exported serving program as a callable module, after `check_serving_archive` (which refuses
    any archive whose loading would unpickle). The program is read from those same checked bytes."""
    data = check_serving_archive(path)
    return torch.export.load(io.BytesIO(data)).module()
