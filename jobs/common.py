"""What every job command shares: config files, run folders, and clear errors at the top level."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pydantic

from catalog import DataNotFoundError, SchemaMismatchError
from explore.cache import CacheError
from jobs.services import ServiceError

# Errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ServiceError,
    CacheError,  # a refused publish, commit or rollback: the message names the live version
    SchemaMismatchError,
    DataNotFoundError,
    FileNotFoundError,
    # a path flag naming a file where a folder belongs, or a place the user may not write
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
    ValueError,
    pydantic.ValidationError,
)


def load_config(path: str | None) -> dict:
    """A job config from a .toml or .json file ({} without a path)."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    if p.suffix not in (".toml", ".json"):
        raise ValueError(f"--config {path}: use a .toml or .json file.")
    try:
        values = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config {path}: not valid {p.suffix[1:].upper()} ({exc}).") from exc
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path}: holds a JSON {type(values).__name__} ({str(values)[:60]}), not an object "
            'of fields. Write the fields as an object, e.g. {"seed": 1}.'
        )
    return values


def merge_config(model: type[pydantic.BaseModel], args: argparse.Namespace):
    """The job's config: the --config file's values, overridden by the flags given on the command line (the
    model's fields whose flag is not None; jobs.cli generates the flags from the same fields)."""
    values = load_config(getattr(args, "config", None))
    values.update({f: getattr(args, f) for f in model.model_fields if getattr(args, f, None) is not None})
    return model(**values)


def new_run_dir(base: str | Path, job: str) -> Path:
    """runs/<YYYYmmdd-HHMMSS>-<job>[-n]: a fresh folder for one run's outputs."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(base)
    for n in range(1000):
        path = base / (f"{stamp}-{job}" if n == 0 else f"{stamp}-{job}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {base}")


def describe_error(exc: BaseException) -> str:
    """A user error as the job prints it: a config validation error as one line per field, named by its
    flag; an OS error by its path and the fix; anything else as its message."""
    if isinstance(exc, pydantic.ValidationError):
        lines = []
        for err in exc.errors():
            field = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"config field '{field}': not a field of this job (check its spelling)")
                continue
            got = "" if err["type"] == "missing" else f" (got {repr(err['input'])[:80]})"
            lines.append(f"--{field.replace('_', '-')} (config field '{field}'): {err['msg']}{got}")
        return "\n".join([*lines, "See --help for the flags and their defaults."])
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename:
        return (
            f"{exc.filename}: {exc.strerror}. Check the path and its permissions: an output flag such "
            "as --out must name a folder you can write to, not a file."
        )
    return str(exc)


def run_main(fn: Callable[[], int | None]) -> None:
    """Run a job's body; a user-fixable error prints one paragraph and exits 2, not a traceback."""
    try:
        code = fn()
    except USER_ERRORS as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
