import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.io import (
    ParquetStreamWriter,
    SchemaMismatchError,
    copy_file,
    read_table,
    write_json,
    write_table,
)
from catalog.schemas import FEEDBACK_LOG, HISTORIES, INTERACTIONS, TABLES


def _sample(schema: pa.Schema, n: int = 3) -> pa.Table:
    """A table of `n` rows with a plausible value for every field type of the schema."""

    def value(t: pa.DataType, i: int):
        if pa.types.is_list(t):
            return [value(t.value_type, i), value(t.value_type, i + 1)]
        if pa.types.is_integer(t):
            return i + 1
        if pa.types.is_floating(t):
            return 0.5 * (i + 1)
        if pa.types.is_boolean(t):
            return i % 2 == 0
        return f"s{i}"

    return pa.table(
        {f.name: pa.array([value(f.type, i) for i in range(n)], f.type) for f in schema}, schema=schema
    )


@pytest.mark.parametrize("name", sorted(TABLES))
def test_round_trip_every_schema(tmp_path, name):
    schema = TABLES[name]
    table = _sample(schema)
    path = write_table(table, tmp_path / f"{name}.parquet", schema)
    back = read_table(path, schema)
    assert back.schema.equals(schema, check_metadata=False)
    assert back.equals(table)


def test_writer_casts_compatible_types(tmp_path):
    t = pa.table(
        {
            "member_id": pa.array([1, 2], pa.int32()),
            "item_id": [3, 4],
            "rating": pa.array([4.0, 5.0], pa.float64()),
            "timestamp": [10, 20],
        }
    )
    back = read_table(write_table(t, tmp_path / "x.parquet", INTERACTIONS), INTERACTIONS)
    assert back.schema.field("member_id").type == pa.int64()
    assert back.schema.field("rating").type == pa.float32()


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"member_id": [1], "item_id": [2], "rating": [4.0]}), path)
    with pytest.raises(SchemaMismatchError) as err:
        read_table(path, INTERACTIONS)
    assert err.value.column == "timestamp"
    assert str(path) in str(err.value) and "timestamp" in str(err.value)


def test_a_column_added_later_reads_as_nulls_in_older_files(tmp_path):
    """IMPRESSION_LOG's `shuffled` came after logs were written without it: those still read, as nulls; the
    same file without a column that was always there is refused."""
    from catalog.schemas import IMPRESSION_LOG, is_added

    assert [f.name for f in IMPRESSION_LOG if is_added(f)] == ["shuffled"]
    old = _sample(IMPRESSION_LOG).drop_columns(["shuffled"])
    pq.write_table(old, tmp_path / "old.parquet")
    back = read_table(tmp_path / "old.parquet", IMPRESSION_LOG)
    assert back.schema == IMPRESSION_LOG and back["shuffled"].null_count == 3
    assert back.drop_columns(["shuffled"]).equals(old.cast(back.drop_columns(["shuffled"]).schema))
    pq.write_table(old.drop_columns(["score"]), tmp_path / "older.parquet")
    with pytest.raises(SchemaMismatchError, match="score"):
        read_table(tmp_path / "older.parquet", IMPRESSION_LOG)


def test_wrong_type_names_column_and_types(tmp_path):
    path = tmp_path / "hist.parquet"
    pq.write_table(
        pa.table({"member_id": [1], "clusters": ["not-a-list"], "timestamps": [[1]], "n_positive": [1]}), path
    )
    with pytest.raises(
        SchemaMismatchError, match=r"column 'clusters': type is string, expected list<item: int32>"
    ):
        read_table(path, HISTORIES)


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    write_table(_sample(INTERACTIONS), path, INTERACTIONS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(SchemaMismatchError, match="corrupt or truncated"):
        read_table(path, INTERACTIONS)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_table(tmp_path / "nope.parquet", INTERACTIONS)


def test_nulls_in_non_nullable_column_are_refused(tmp_path):
    t = _sample(FEEDBACK_LOG).set_column(1, "member_id", pa.array([1, None, 3], pa.int64()))
    with pytest.raises(SchemaMismatchError, match="member_id.*null"):
        write_table(t, tmp_path / "log.parquet", FEEDBACK_LOG)
    assert not (tmp_path / "log.parquet").exists()


def test_failed_stream_leaves_nothing_behind(tmp_path):
    path = tmp_path / "stream.parquet"
    with pytest.raises(RuntimeError), ParquetStreamWriter(path, INTERACTIONS) as w:
        w.write(_sample(INTERACTIONS))
        raise RuntimeError("job died mid-way")
    assert list(tmp_path.iterdir()) == []


def test_stream_writer_appends_batches(tmp_path):
    path = tmp_path / "stream.parquet"
    with ParquetStreamWriter(path, INTERACTIONS) as w:
        for _ in range(3):
            w.write(_sample(INTERACTIONS, 4))
    assert read_table(path, INTERACTIONS).num_rows == 12
    assert [p.name for p in tmp_path.iterdir()] == ["stream.parquet"]


def test_overwrite_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "inter.parquet"
    write_table(_sample(INTERACTIONS, 2), path, INTERACTIONS)

    def dies_mid_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_mid_write)  # the function catalog.io calls
    with pytest.raises(OSError, match="disk full"):
        write_table(_sample(INTERACTIONS, 5), path, INTERACTIONS)
    monkeypatch.undo()
    assert read_table(path, INTERACTIONS).num_rows == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inter.parquet"]


def test_json_and_file_copies_are_atomic(tmp_path, monkeypatch):
    write_json({"v": 1}, tmp_path / "m.json")
    (tmp_path / "tool").write_bytes(b"complete binary")
    copy_file(tmp_path / "tool", tmp_path / "cached")

    def dies_mid_write(self, data, *args, **kwargs):
        Path.write_bytes(self, data[:3].encode())
        raise OSError("disk full")

    def dies_mid_copy(src, dest, **kwargs):
        Path(dest).write_bytes(b"comp")
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", dies_mid_write)
    monkeypatch.setattr(shutil, "copy2", dies_mid_copy)
    with pytest.raises(OSError):
        write_json({"v": 2}, tmp_path / "m.json")
    with pytest.raises(OSError):
        copy_file(tmp_path / "tool", tmp_path / "fresh")
    monkeypatch.undo()
    assert json.loads((tmp_path / "m.json").read_text()) == {"v": 1}
    assert (tmp_path / "cached").read_bytes() == b"complete binary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cached", "m.json", "tool"]
