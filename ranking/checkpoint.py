"""Self-describing ranker checkpoints: a folder of safetensors weights and JSON, loadable from the
folder alone (no pickle), plus an export of the serving model with torch.export.

<folder>/
  config.json         format, RankerConfig, TrainConfig, bandit settings, the tasks
  schema.json         the fitted FeatureSchema (vocabularies, imputation values, long-dwell tables)
  model.safetensors   weights and buffers
  fisher.safetensors  diagonal empirical Fisher (for the next incremental period), optional
  bandit.safetensors  Bayesian last-layer posterior, optional
  metrics.json        evaluation figures, optional
  serving.pt2         torch.export program of the serving forward, optional

`save_checkpoint` builds the folder beside its destination and swaps it in whole, so no file of an
older checkpoint (an old bandit, Fisher or export) survives next to the new weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from catalog.io import replace_folder, staging_folder
from ranking.bandit import BayesianLastLayer
from ranking.config import RankerConfig
from ranking.model import LiRankModel, build_model
from ranking.schema import FeatureSchema

FORMAT = "lirank-ranker/1"
OPTIONAL_FILES = ("fisher.safetensors", "bandit.safetensors", "metrics.json", "serving.pt2")


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
    other contents go with the old checkpoint). The other arguments are those of `write_checkpoint`."""
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
    _write_json(
        folder / "config.json",
        {
            "format": FORMAT,
            "ranker": config.to_dict(),
            "train": train_config or {},
            "tasks": list(schema.tasks),
            "bandit_task": bandit_task,
        },
    )
    return folder


def read_checkpoint_config(folder: str | os.PathLike) -> tuple[dict, RankerConfig, FeatureSchema]:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a ranker checkpoint: config.json is missing.")
    try:
        meta = json.loads(cfg_path.read_text())
        schema = FeatureSchema.from_dict(json.loads((folder / "schema.json").read_text()))
    except (json.JSONDecodeError, FileNotFoundError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{folder}: corrupt or incomplete checkpoint ({exc}); retrain or restore it."
        ) from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {meta.get('format')!r}, this code reads {FORMAT!r}.")
    return meta, RankerConfig.from_dict(meta["ranker"]), schema


def load_model(
    folder: str | os.PathLike, *, data_schema: FeatureSchema | None = None
) -> tuple[LiRankModel, FeatureSchema, RankerConfig, dict]:
    """Rebuild the model from the folder alone; refuse data whose schema has another structure."""
    folder = Path(folder)
    meta, config, schema = read_checkpoint_config(folder)
    if data_schema is not None:
        schema.check_compatible(data_schema, what=f"checkpoint {folder}")
    model = build_model(schema, config)
    state = _load_tensors(folder / "model.safetensors")
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
    return model.eval(), schema, config, meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
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


def load_fisher(folder: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    path = Path(folder) / "fisher.safetensors"
    return _load_tensors(path) if path.is_file() else None


def load_bandit(folder: str | os.PathLike) -> BayesianLastLayer | None:
    path = Path(folder) / "bandit.safetensors"
    return BayesianLastLayer.from_state_dict(_load_tensors(path)) if path.is_file() else None


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
) -> Path:
    """torch.export the serving forward with a dynamic batch size and save it as a .pt2 program."""
    module = ServingModule(model.eval())
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = tuple({0: batch} for _ in example_inputs)
    program = torch.export.export(module, example_inputs, dynamic_shapes=dynamic)
    path = Path(path)
    torch.export.save(program, str(path))
    return path


def load_serving(path: str | os.PathLike):
    """The exported serving program as a callable module."""
    return torch.export.load(str(path)).module()
