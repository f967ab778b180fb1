"""Arrow column checks shared by schema fitting and featurizing: every bad column is a ValueError
naming the column, what was found and the fix."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ID_KINDS = ("integer", "string")


def require(table: pa.Table | pa.RecordBatch, columns: list[str], what: str = "batch") -> None:
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise ValueError(
            f"{what} is missing column(s) {missing}; it has {table.schema.names}. Build the examples with "
            "the dataset builder the model was trained with (ranking.datasets)."
        )


def float_column(col: pa.ChunkedArray | pa.Array, name: str) -> np.ndarray:
    """(N,) float64; nulls become NaN."""
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise ValueError(
            f"column {name!r} has type {col.type}; a numeric column is needed. Convert it to numbers first."
        )
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def id_kind_of(type_: pa.DataType, name: str) -> str:
    """The id kind a column of this Arrow type holds: 'integer' (ints, floats) or 'string'."""
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return "integer"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    raise ValueError(
        f"id column {name!r} has type {type_}; ids must be integers or strings. Cast the column first."
    )


def id_values(col: pa.ChunkedArray | pa.Array, name: str, kind: str) -> np.ndarray | list:
    """Ids of a hashed field in the form `hash_ids` takes: (N,) int64 for 'integer' fields (whole-number
    floats are cast; null is -1), a list of str for 'string' fields (null stays None).

    kind '' (schemas saved before the id kind was recorded) takes the kind of the column's type, as
    those schemas did (except that whole-number floats now hash like integers). Any other mismatch is
    refused: 10, 10.0 and "10" must not hash apart silently.
    """
    found = id_kind_of(col.type, name)
    kind = kind or found
    if found != kind:
        raise ValueError(
            f"id column {name!r} has type {col.type}, but its field was fitted on {kind} ids; "
            f"cast the column to {'int64' if kind == 'integer' else 'string'} (ids of another type hash "
            "to other embedding rows)."
        )
    if kind == "string":
        return pc.cast(col, pa.string()).to_pylist()
    if pa.types.is_integer(col.type):
        return pc.fill_null(col, -1).to_numpy(zero_copy_only=False)
    x = pc.fill_null(col, -1.0).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(x) | (x != np.round(x)) | (np.abs(x) >= 2.0**63)
    if bad.any():
        raise ValueError(
            f"id column {name!r} holds {float(x[bad][0])!r}, not a whole number; integer ids must be whole "
            "numbers. Fix or drop those rows."
        )
    return x.astype(np.int64)


def list_values(col: pa.ListArray, name: str) -> pa.Array:
    """The values of a list column, flattened; a null list is empty, a null inside a list is refused."""
    col = pc.fill_null(col, pa.scalar([], col.type)) if col.null_count else col
    values = col.flatten()
    if values.null_count:
        raise ValueError(f"column {name!r} has null entries inside its lists; drop them first.")
    return values
