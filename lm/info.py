"""A model folder's info JSON, typed: what the folder holds, the clusters it knows, how it was trained.

Both LLMs' folders carry one (explore/model_info.py: novelty.json; alignment/info.py: alignment.json).
The common layout, format_version 1:

    {"format_version": 1,
     "base": "tiny" | preset | folder,  "method": "full" | "lora",
     "clusters": {"names": [...], "descriptions": [...], "signature": "<16 hex>"},
     "<config key>": {the training config, as saved by dataclasses.asdict},
     "lora": {"r", "alpha", "dropout"} | null (full training),
     "report": {the training report},
     ...the subclass's own keys}

`read` returns the dataclass, or a ValueError that names the file and the fix for a missing, corrupt or
newer file; `write` replaces the file atomically. A subclass names its file, its config key, the job
that trains one, and adds its own fields (to_dict / _fields_from).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from catalog.vocabulary import ClusterVocabulary
from lm.lora import LoraSettings

FORMAT_VERSION = 1  # bump when the JSON layout changes; read() refuses a newer one


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """The info JSON of a model folder trained here (a subclass per model)."""

    FILE: ClassVar[str] = "info.json"
    CONFIG_KEY: ClassVar[str] = "config"  # the JSON key of the training config
    WHAT: ClassVar[str] = "model"  # what the folder holds, for messages
    TRAIN: ClassVar[str] = "python -m jobs.<train job> --out DIR"  # how to get one, for messages

    base: str  # the base model: a preset name or the folder it was loaded from
    method: str  # "full" (every weight trained) or "lora" (adapters)
    vocab: ClusterVocabulary  # the clusters the model was trained on; a catalog must match its signature
    config: dict  # the training config as saved (the trainer's dataclass, asdict)
    lora: LoraSettings | None = None  # the adapters' settings when method == "lora"
    report: dict  # the training report
    format_version: int = FORMAT_VERSION

    def __init_subclass__(cls, *, file: str, what: str, train: str, config_key: str = "config", **kwargs):
        """class XInfo(ModelInfo, file="x.json", what="x model", train="python -m jobs.train_x ...")."""
        super().__init_subclass__(**kwargs)
        cls.FILE, cls.WHAT, cls.TRAIN, cls.CONFIG_KEY = file, what, train, config_key

    def __post_init__(self):
        if self.method not in ("full", "lora"):
            raise ValueError(f"{type(self).__name__}.method={self.method!r}: use 'full' or 'lora'.")

    def with_report(self, report: dict) -> ModelInfo:
        """The same info with another report (e.g. the evaluation added after training)."""
        return replace(self, report=report)

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "base": self.base,
            "method": self.method,
            "clusters": {
                "names": list(self.vocab.names),
                "descriptions": list(self.vocab.descriptions),
                "signature": self.vocab.signature(),
            },
            self.CONFIG_KEY: self.config,
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "report": self.report,
        }

    @classmethod
    def _fields_from(cls, d: dict) -> dict[str, Any]:
        """The dataclass fields of a parsed JSON (a subclass adds its own and fills legacy gaps)."""
        clusters = d["clusters"]
        vocab = ClusterVocabulary(tuple(clusters["names"]), tuple(clusters["descriptions"]))
        if "signature" in clusters and clusters["signature"] != vocab.signature():
            raise ValueError(
                f"clusters.signature={clusters['signature']!r} does not match the names ({vocab.signature()})"
            )
        config = d[cls.CONFIG_KEY]
        if not isinstance(config, dict):
            raise TypeError(f"{cls.CONFIG_KEY} is {type(config).__name__}, not an object")
        method = str(d["method"])
        lora = d["lora"] if "lora" in d else _legacy_lora(config, method)
        return {
            "format_version": int(d["format_version"]),
            "base": str(d["base"]),
            "method": method,
            "vocab": vocab,
            "config": config,
            "lora": LoraSettings.from_dict(lora) if lora is not None else None,
            "report": dict(d.get("report") or {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        return cls(**cls._fields_from(d))

    # --- files --------------------------------------------------------------------------------

    def write(self, folder: str | os.PathLike) -> Path:
        """Write FILE into `folder`, replacing an earlier one atomically (a reader sees old or new)."""
        path = Path(folder) / self.FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ModelInfo:
        """FILE of a model folder trained here, or a ValueError naming the file and the fix."""
        path = Path(folder) / cls.FILE
        if not path.is_file():
            article = "an" if cls.WHAT[0] in "aeiou" else "a"
            raise ValueError(
                f"{cls.WHAT} {str(folder)!r}: no {cls.FILE}; not {article} {cls.WHAT} folder. "
                f"Train one with `{cls.TRAIN}`."
            )
        try:
            d = json.loads(path.read_text())
            version = d["format_version"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: corrupt ({exc!r}); retrain the {cls.WHAT} (`{cls.TRAIN}`).") from exc
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version={version!r} is newer than this code reads (<= {FORMAT_VERSION}); "
                f"update the code, or retrain the {cls.WHAT} with it (`{cls.TRAIN}`)."
            )
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: corrupt ({exc!r}); retrain the {cls.WHAT} (`{cls.TRAIN}`).") from exc


def _legacy_lora(config: dict, method: str) -> dict | None:
    """The LoRA settings of a file written before they had their own key: the config's flat lora_* fields."""
    if method != "lora" or "lora_r" not in config:
        return None
    return {"r": config["lora_r"], "alpha": config["lora_alpha"], "dropout": config["lora_dropout"]}


def config_kwargs(cls, d: dict) -> dict:
    """The keyword arguments of trainer config `cls` from its saved dict (asdict, as in an info JSON).

    The flat lora_r / lora_alpha / lora_dropout of configs saved before LoraSettings become its `lora`
    dict; an unknown key is a ValueError that names it and the known ones.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a dict of its fields, got {type(d).__name__}.")
    d = dict(d)
    flat = {k: d.pop(f"lora_{k}") for k in ("r", "alpha", "dropout") if f"lora_{k}" in d}
    if flat:
        d["lora"] = {**LoraSettings().to_dict(), **flat}
    known = {f.name for f in fields(cls)}
    if set(d) - known:
        raise ValueError(
            f"{cls.__name__}: unknown field(s) {sorted(set(d) - known)}; known: {sorted(known)}."
        )
    return d
