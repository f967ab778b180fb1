"""Command lines generated from the job models: each option is stated once, in its pydantic field.

A job's options live in one pydantic model; every field of a scalar type (int, float, str, bool, a
Literal of strings, one of them | None, or a list of them: several values after the flag) becomes a flag named after it (`min_score` -> `--min-score`),
its help the field's description and its default the field's default. Bool fields get `--x/--no-x`.
Fields of other types (lists, nested settings) are set in the --config file only, and the help says so.

    p = job_parser(BestOfNConfig, __doc__)
    cfg = merge_config(BestOfNConfig, p.parse_args(argv))

Flags default to None, so `merge_config` can tell a flag given on the command line (it overrides the
config file) from one left out (the config file's value, else the field's default, applies).
"""

from __future__ import annotations

import argparse
import types
import typing

import pydantic
from pydantic_core import PydanticUndefined

SCALARS = (bool, int, float, str)


def _scalar(annotation) -> tuple[type, tuple | None, bool] | None:
    """(type, choices, many) of a flag for a field annotation, or None when the field is config-file only;
    `many`: a list of scalars, given as several values after the flag."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (None,)
        inner = _scalar(item)
        return (inner[0], inner[1], True) if inner and not inner[2] and inner[0] is not bool else None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        kinds = {type(v) for v in values}
        return (kinds.pop(), values, False) if len(kinds) == 1 and kinds <= set(SCALARS) else None
    return (annotation, None, False) if annotation in SCALARS else None


def _default(field) -> object:
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[pydantic.BaseModel],
    *,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Add a flag for each scalar field of `model` (but `exclude`); returns the fields given flags.

    Raises TypeError for a field without a description: a flag's help is its field's description.
    """
    added = []
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        if not field.description:
            raise TypeError(f"{model.__name__}.{name}: give the field a description; it is the flag's help.")
        kind = _scalar(field.annotation)
        if kind is None:
            continue
        typ, choices, many = kind
        required = field.is_required()
        default = _default(field)
        if isinstance(default, list):
            default = " ".join(map(str, default))
        shown = "required" if required else f"default: {default}" if default not in (None, "") else ""
        help_text = field.description + (f" ({shown})" if shown else "")
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if typ is bool:
            parser.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(name), dest=name, type=typ, choices=choices, default=None, help=help_text,
                nargs="+" if many else None,
            )  # fmt: skip
        added.append(name)
    return added


def config_only_fields(model: type[pydantic.BaseModel]) -> list[str]:
    """The fields without a flag (set them in the --config file)."""
    return [n for n, f in model.model_fields.items() if _scalar(f.annotation) is None]


def job_parser(
    model: type[pydantic.BaseModel], doc: str | None, *, exclude: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """An argument parser for a job: --config plus a flag per scalar field of `model`."""
    rest = config_only_fields(model)
    epilog = (
        "Set in the --config file only: " + ", ".join(f for f in rest if f not in exclude) + "."
        if [f for f in rest if f not in exclude]
        else None
    )
    p = argparse.ArgumentParser(
        description=doc, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_flag(p, model)
    add_model_flags(p, model, exclude=exclude)
    return p


def add_config_flag(parser: argparse.ArgumentParser, model: type[pydantic.BaseModel]) -> None:
    parser.add_argument(
        "--config", help=f"TOML or JSON file with fields of {model.__name__} (the flags override it)"
    )
