"""64-bit id hashing for QR embeddings: no vocabulary to maintain, no out-of-vocabulary ids.

Integers go through MurmurHash3's 64-bit finalizer (fmix64) after xor with a per-field seed; strings
through MurmurHash3 x64 (mmh3). Either way the result is a non-negative int64 (top bit dropped), so it
is a valid index source for `hashed % buckets` in torch. The two never agree (10 and "10" hash apart),
so a field's ids must keep one kind: ranking.columns.id_values enforces the kind fitted in the schema.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def field_seed(name: str) -> int:
    """A stable 32-bit seed per field name, so equal ids in two fields hash apart."""
    return zlib.crc32(name.encode())


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit avalanche finalizer on uint64 (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= _M1
        x ^= x >> np.uint64(33)
        x *= _M2
        x ^= x >> np.uint64(33)
    return x


def hash_ids(values: np.ndarray | Sequence, seed: int = 0) -> np.ndarray:
    """Hash ids (ints or strings) to non-negative int64.

    Args:
        values: (N,) integer array, or a sequence of str (None hashes like the empty string).
            Floats are refused: cast whole-number floats to int64 first (see ranking.columns.id_values).
        seed: per-field seed, see `field_seed`.
    Returns:
        (N,) int64 in [0, 2^63).
    """
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind in "fc":
        raise ValueError(
            f"hash_ids got {arr.dtype} ids; floats would hash as their text ('10.0'). Cast whole-number "
            "floats to int64 first."
        )
    if arr.dtype.kind in "iub":
        with np.errstate(over="ignore"):
            x = arr.astype(np.int64).view(np.uint64) ^ (np.uint64(seed) * _GOLDEN)
        return (fmix64(x) >> np.uint64(1)).astype(np.int64)
    import mmh3

    out = np.fromiter(
        (mmh3.hash64("" if v is None else str(v), seed, signed=False)[0] for v in arr.tolist()),
        dtype=np.uint64,
        count=len(arr),
    )
    return (out >> np.uint64(1)).astype(np.int64)
