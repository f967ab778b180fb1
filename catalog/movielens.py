"""MovieLens-100K, read from the copy that the `recbole` package ships (never committed here).

GroupLens terms: research use; cite F. M. Harper and J. A. Konstan, "The MovieLens Datasets:
History and Context", ACM TiiS 5(4), 2015.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from catalog.schemas import INTERACTIONS, MEMBERS

GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)  # the 19 genres of ML-100K

_INSTALL_HINT = (
    "MovieLens-100K ships inside the 'recbole' package: run `make install`, or "
    "`pip install --no-deps recbole==1.2.1`. Or point ML100K_DIR at a folder with "
    "ml-100k.inter, ml-100k.item and ml-100k.user."
)


class DataNotFoundError(FileNotFoundError):
    """A data package or file the loader needs is not installed."""


def movielens_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ml-100k.{inter,item,user}: `root`, else $ML100K_DIR, else the recbole package's
    copy. DataNotFoundError naming the first missing file."""
    env = os.environ.get("ML100K_DIR")
    if root is not None:
        root = Path(root)
    elif env:
        root = Path(env)
    else:
        spec = importlib.util.find_spec("recbole")
        if spec is None or not spec.submodule_search_locations:
            raise DataNotFoundError(
                f"MovieLens-100K not found: package 'recbole' is not installed. {_INSTALL_HINT}"
            )
        root = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        if not (root / name).is_file():
            raise DataNotFoundError(f"MovieLens-100K file {root / name} is missing. {_INSTALL_HINT}")
    return root


@dataclass(frozen=True)
class MovieLens:
    """The raw dataset as tables. `items` has every ITEMS column except cluster_id and n_ratings (which
    catalog.build counts over the ratings the catalog keeps)."""

    interactions: pa.Table  # INTERACTIONS
    items: pa.Table  # item_id, title, year, genres
    members: pa.Table  # MEMBERS
    source: str


def _read_tsv(path: Path, types: dict[str, pa.DataType]) -> pa.Table:
    """RecBole atomic files: tab separated, header 'name:type'. Columns renamed to 'name'."""
    names = path.open(encoding="utf-8").readline().rstrip("\n").split("\t")
    plain = [n.split(":")[0] for n in names]
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=plain, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )
    return table


def _check_range(table: pa.Table, column: str, lo: float, hi: float, path: Path) -> None:
    values = table.column(column)
    bad = pc.or_(pc.less(values, lo), pc.greater(values, hi))
    n_bad = pc.sum(bad).as_py() or 0
    if n_bad:
        first = pc.filter(values, bad)[0].as_py()
        raise ValueError(
            f"{path}, column '{column}': {n_bad} value(s) outside [{lo}, {hi}], e.g. {first}. "
            "The data file is corrupt; reinstall the package that ships it."
        )


def load_movielens_100k(root: str | os.PathLike | None = None) -> MovieLens:
    """Load ratings (with timestamps), items (titles, years, genres) and members (demographics)."""
    root = movielens_dir(root)
    inter_path, item_path, user_path = (root / f"ml-100k.{s}" for s in ("inter", "item", "user"))

    inter = _read_tsv(
        inter_path,
        {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.float64()},
    )
    _check_range(inter, "rating", 1, 5, inter_path)
    interactions = pa.table(
        {
            "member_id": inter["user_id"],
            "item_id": inter["item_id"],
            "rating": inter["rating"],
            "timestamp": pc.cast(inter["timestamp"], pa.int64()),
        },
        schema=INTERACTIONS,
    )

    raw_items = _read_tsv(
        item_path,
        {
            "item_id": pa.int64(),
            "movie_title": pa.string(),
            "release_year": pa.string(),
            "class": pa.string(),
        },
    )
    years = np.array(
        [int(y) if y.strip().isdigit() else 0 for y in raw_items["release_year"].to_pylist()], dtype=np.int32
    )
    genres = []
    for item_id, cls in zip(raw_items["item_id"].to_pylist(), raw_items["class"].to_pylist(), strict=True):
        g = [t for t in cls.split() if t]
        unknown = [t for t in g if t not in GENRES]
        if unknown:
            raise ValueError(
                f"{item_path}, column 'class': item {item_id} has unknown genre(s) {unknown}; "
                f"expected names from {GENRES}."
            )
        genres.append(g or ["unknown"])
    items = pa.table(
        {
            "item_id": raw_items["item_id"],
            "title": raw_items["movie_title"],
            "year": pa.array(years, pa.int32()),
            "genres": pa.array(genres, pa.list_(pa.string())),
        }
    )

    users = _read_tsv(
        user_path,
        {
            "user_id": pa.int64(),
            "age": pa.int32(),
            "gender": pa.string(),
            "occupation": pa.string(),
            "zip_code": pa.string(),
        },
    )
    members = pa.table(
        {
            "member_id": users["user_id"],
            "age": users["age"],
            "gender": users["gender"],
            "occupation": users["occupation"],
            "zip_code": users["zip_code"],
        },
        schema=MEMBERS,
    )

    unknown_items = pc.sum(pc.invert(pc.is_in(interactions["item_id"], items["item_id"]))).as_py()
    if unknown_items:
        raise ValueError(
            f"{inter_path}, column 'item_id': {unknown_items} rating(s) of items missing from "
            f"{item_path}. The data files are inconsistent; reinstall the package that ships them."
        )
    return MovieLens(interactions=interactions, items=items, members=members, source=str(root))
