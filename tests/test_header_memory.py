"""A checkpoint's headers cost bounded memory per tensor (issue 14: a header of a million tensors).

A header is held as columns (format.TensorTable) and the checkpoint's name index as one int
per name (checkpoint.TensorMap); records are made on access. These tests build a header of
a million 1-byte tensors (about 70 MB of JSON, the most a 100 MB header holds with short
names), open it, and hold Python's own allocation count (tracemalloc) to a bound per tensor
beyond the names' own strings, both what stays and the peak while parsing.
"""
from __future__ import annotations

import struct
import sys
import tracemalloc

import pytest

from weightsurgeon.checkpoint import open_checkpoint
from weightsurgeon.format import TensorInfo, parse_header

N = 1_000_000
# Bytes per tensor beyond its name's str, in bytes (what the columns and the index cost):
# 1 (dtype) + 4 (shape id) + 16 (offsets) + 8 (the names list) + ~41 (the name index dict)
# + 32 (its int) = ~102 today; one TensorInfo per tensor cost ~300 here, so 160 catches it.
RETAINED_PER_TENSOR = 160
# The peak while parsing adds the header text (~70 bytes a tensor here) and the duplicate
# check's set: 400 catches a json.loads of the table (~1 KB a tensor).
PEAK_PER_TENSOR = 400


def _name(i: int) -> str:
    return f"l.{i // 1000}.e.{i % 1000}.w"


def _write_header(path, n: int) -> None:
    body = ",".join(f'"{_name(i)}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(n))
    blob = ('{"__metadata__":{"format":"pt"},' + body + "}").encode()
    del body
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.write(bytes(n))


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "model.safetensors"
    _write_header(path, N)
    yield path
    path.unlink()


def _names_bytes(n: int) -> int:
    return sum(sys.getsizeof(_name(i)) for i in range(n))


def test_a_million_tensor_header_costs_a_bounded_number_of_bytes_per_tensor(huge):
    names = _names_bytes(N)
    tracemalloc.start()
    try:
        ckpt = open_checkpoint(huge)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ckpt) == N
    per_tensor = (retained - names) / N
    assert per_tensor < RETAINED_PER_TENSOR, f"{per_tensor:.0f} bytes a tensor beyond its name held after opening"
    peak_per_tensor = (peak - names) / N
    assert peak_per_tensor < PEAK_PER_TENSOR, f"{peak_per_tensor:.0f} bytes a tensor beyond its name at the peak"
    # Records made on access say what the header says, wherever they are asked for.
    last = ckpt[_name(N - 1)]
    assert (last.dtype, last.shape, last.nbytes, last.begin) == ("U8", (1,), 1, ckpt.shards[0].data_start + N - 1)
    assert _name(N) not in ckpt and ckpt.tensors.get(_name(N)) is None
    assert [t.name for t in ckpt.shards[0].tensors[:3]] == [_name(0), _name(1), _name(2)]


def test_the_table_reads_like_a_sequence_of_records(huge):
    table = parse_header(huge).tensors
    assert len(table) == N and table[-1] == table[N - 1] and table[0].begin == table[-1].begin - (N - 1)
    with pytest.raises(IndexError):
        table[N]
    first = next(iter(table))
    assert first == table[0] == TensorInfo(_name(0), "U8", (1,), huge, table[0].begin, table[0].begin + 1)
    assert hash(first) == hash(table[0]) and first.numel == 1 and first.itemsize == 1
    with pytest.raises(AttributeError):  # records stay frozen
        first.name = "x"
