"""The ranker's configuration: one frozen dataclass, saved beside the weights as JSON."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields, replace

CROSS_KINDS = ("none", "dcnv2", "residual")
HEAD_KINDS = ("groups", "mmoe")


def _split_top(inner: str) -> list[str]:
    """'tuple[str, ...], ...' -> ['tuple[str, ...]', '...']: split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    return [*parts, inner[start:].strip()]


def _is_kind(value, kind: str) -> bool:
    """Whether `value` fits the annotation `kind` (int, float, bool, str, tuple[...]; JSON gives lists
    for tuples, and an int is fine where a float is declared). Other annotations are not checked."""
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple[") and kind.endswith("]"):
        if not isinstance(value, (tuple, list)):
            return False
        parts = _split_top(kind[len("tuple[") : -1])
        if parts[-1] == "...":
            return all(_is_kind(v, parts[0]) for v in value)
        return len(value) == len(parts) and all(_is_kind(v, p) for v, p in zip(value, parts, strict=True))
    return True


def _describe(kind: str) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    if kind in names:
        return names[kind]
    if kind.startswith("tuple["):
        parts = _split_top(kind[len("tuple[") : -1])
        if parts[-1] == "...":
            return f"a list whose items are each {_describe(parts[0])}"
        return f"a list of {len(parts)} items, each {_describe(parts[0])}"
    return kind


def check_field_types(config) -> None:
    """Raise a ValueError naming the first field of a config dataclass whose value is not of its declared
    kind (a string where a number belongs, a number where a list belongs), before any check compares it."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(f.type, str) and not _is_kind(value, f.type):
            raise ValueError(f"{type(config).__name__}.{f.name}={value!r}: must be {_describe(f.type)}.")


def check_dict(name: str, d) -> dict:
    """`d` if it is a dict of fields (a JSON object), else a ValueError that says what it is."""
    if not isinstance(d, dict):
        raise ValueError(
            f'{name}: expected an object of fields (e.g. {{"epochs": 2}}), got a {type(d).__name__} '
            f"({str(d)[:60]})."
        )
    return d


@dataclass(frozen=True)
class RankerConfig:
    """Which LiRank techniques are on, and their sizes."""

    embedding_dim: int = 16  # D, width of every sparse field's embedding
    dense_batchnorm: bool = True  # batch norm on numeric inputs (keeps DCNv2 stable)
    cross: str = "residual"  # interaction arch: 'none', 'dcnv2' (low-rank), 'residual' (+ attention stack)
    cross_layers: int = 2  # cross layers per stack
    cross_rank: int = 16  # r, low-rank width of U, V (and Q, K)
    attention_temperature: float = 1.0  # tau in softmax(q k^T / (tau sqrt(r)))
    mlp_widths: tuple[int, ...] = (256, 128)  # the over-arch MLP; the paper's large MLP is 4 x 3500
    gating: bool = True  # dense gating on every MLP layer
    dropout: float = 0.0  # dropout after MLP layers and in attention
    history: bool = True  # TransAct encoder over the member's recent actions (needs a history in the data)
    action_dim: int = 8  # D_a, action embedding width in TransAct tokens
    transact_layers: int = 2  # encoder layers (paper: 2)
    transact_heads: int = 2  # must divide 2 D + D_a
    last_k: int = 5  # the last k encoded steps kept next to the max-pooled token (paper: 5)
    heads: str = "groups"  # 'groups' (task grouping) or 'mmoe' (the comparison baseline)
    task_groups: tuple[tuple[str, ...], ...] = ()  # tasks sharing a tower; () puts every task in one group
    tower_width: int = 64  # H, width of each group tower (and of MMoE experts); the last layer's input
    mmoe_experts: int = 4  # experts when heads='mmoe'
    calibration: bool = True  # co-trained isotonic calibration layer on each task's logit
    calibration_buckets: int = 32  # n buckets over the logit range
    calibration_range: tuple[float, float] = (-8.0, 8.0)  # [lo, hi] of the bucketized logit

    def __post_init__(self):
        def bad(name: str, fix: str):
            raise ValueError(f"RankerConfig.{name}={getattr(self, name)!r}: {fix}")

        check_field_types(self)

        for name in ("embedding_dim", "cross_layers", "cross_rank", "tower_width", "action_dim"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1.")
        if self.cross not in CROSS_KINDS:
            bad("cross", f"use one of {CROSS_KINDS}.")
        if self.heads not in HEAD_KINDS:
            bad("heads", f"use one of {HEAD_KINDS}.")
        if not self.mlp_widths or min(self.mlp_widths) < 1:
            bad("mlp_widths", "give one or more positive widths, e.g. (256, 128).")
        if not 0 <= self.dropout < 1:
            bad("dropout", "must be in [0, 1).")
        if self.attention_temperature <= 0:
            bad("attention_temperature", "must be > 0.")
        if (2 * self.embedding_dim + self.action_dim) % self.transact_heads:
            bad(
                "transact_heads",
                f"must divide 2*embedding_dim + action_dim = {2 * self.embedding_dim + self.action_dim}.",
            )
        if self.last_k < 1:
            bad("last_k", "must be >= 1.")
        lo, hi = self.calibration_range
        if not hi > lo or self.calibration_buckets < 1:
            bad("calibration_range", "need hi > lo and calibration_buckets >= 1.")
        # JSON round trips give lists; keep the dataclass hashable and comparable
        object.__setattr__(self, "mlp_widths", tuple(self.mlp_widths))
        object.__setattr__(self, "task_groups", tuple(tuple(g) for g in self.task_groups))
        object.__setattr__(self, "calibration_range", tuple(self.calibration_range))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RankerConfig:
        check_dict("RankerConfig", d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"RankerConfig: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**d)

    def replace(self, **changes) -> RankerConfig:
        return replace(self, **changes)

    def group_indices(self, tasks: tuple[str, ...]) -> list[list[int]]:
        """task_groups as index lists over `tasks`, checked to be a partition of them."""
        if not self.task_groups:
            return [list(range(len(tasks)))]
        named = [t for g in self.task_groups for t in g]
        if sorted(named) != sorted(tasks):
            raise ValueError(
                f"RankerConfig.task_groups={self.task_groups}: must name each task of the data exactly once; "
                f"the data's tasks are {list(tasks)}."
            )
        return [[tasks.index(t) for t in g] for g in self.task_groups]


def tiny() -> RankerConfig:
    """A seconds-to-train preset for tests."""
    return RankerConfig(
        embedding_dim=8,
        cross_layers=1,
        cross_rank=4,
        mlp_widths=(32, 16),
        action_dim=4,
        tower_width=16,
        last_k=2,
    )


def paper() -> RankerConfig:
    """The paper's sizes: the 4 x 3500 gated MLP (GPU territory)."""
    return RankerConfig(
        embedding_dim=32, cross_rank=64, mlp_widths=(3500,) * 4, tower_width=256, action_dim=16
    )


PRESETS = {"tiny": tiny, "default": RankerConfig, "paper": paper}
