"""Every message of the header parser (format.py), reached as a user reaches it: `surgeon inspect FILE`.

Each case writes one damaged .safetensors file and checks the one `error:` line: exit 1, the
file named, the distinctive words of the message, and what to do about it. test_format.py
judges the same files against the safetensors library; this file judges what the user reads.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import tensor_entry, write_raw
from weightsurgeon import format as fmt
from weightsurgeon.errors import SurgeonError

F32x1 = tensor_entry("F32", [1], 0, 4)
DAMAGED = "the file is damaged or not safetensors: download or save it again"

# A header over 1 MB whose unknown field is far denser in JSON values than any tensor table.
_BOMB_HEAD = b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0], "x": ['

# (id, header, data, declared header length or None, the words the message must hold, whether it ends with DAMAGED)

CASES = [
    ("too_short", None, b"", None, "need an 8-byte header length", True),
    ("length_over_limit", b"{}", b"", 100_000_001, "exceeds the 100 MB limit", True),
    ("length_past_eof", b"{}", b"", 100, "runs past the end of the file (", True),
    ("not_utf8", b'{"\xff\xfe": 1}', b"", None, "header is not valid UTF-8 (byte", True),
    ("not_json", "{} x", b"", None, "header is not valid JSON", True),
    ("lone_surrogate_name", '{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, None,
     "header is not valid JSON", True),
    ("duplicate_name", '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                       '"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4, None,
     ("header names tensor", "'a' twice"), True),
    ("json_array", "[]", b"", None, ("header must be a JSON object, got", "got list"), True),
    ("metadata_int", {"__metadata__": {"a": 1}}, b"", None, "__metadata__ must map strings to strings", True),
    ("metadata_surrogate", '{"__metadata__": {"a": "\\udc00"}}', b"", None,
     ("header is not valid JSON", "string with a lone surrogate escape"), True),
    ("negative_integer", {"a": tensor_entry("F32", [-1], 0, 4)}, b"\0" * 4, None,
     ("header refused: it holds a negative integer (-1)", "shapes and offsets included, is unsigned"), True),
    ("integer_over_64_bits", '{"a": {"dtype": "F32", "shape": [18446744073709551617], "data_offsets": [0, 4]}}',
     b"\0" * 4, None, "header refused: integer 18446744073709551617 does not fit in 64 bits", True),
    ("width_bomb_arrays", _BOMB_HEAD + b"[]," * 1_000_000 + b"0]}}", b"", None,
     ("header refused: 2 objects, 1000003 arrays", "far denser than any tensor table (a JSON bomb?)"), True),
    ("width_bomb_integers", _BOMB_HEAD + b"1000," * 600_000 + b"0]}}", b"", None,
     "header refused: far more integers than a tensor table holds (a JSON bomb?)", True),
    ("entry_not_object", {"a": [1, 2]}, b"", None, "entry must be an object with dtype, shape, data_offsets", True),
    ("entry_missing_shape", {"a": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4, None,
     ("its entry is missing", "missing shape"), True),
    ("sub_byte_dtype", {"a": tensor_entry("F4", [2], 0, 1)}, b"\0", None,
     ("packed sub-byte dtype F4", "is not supported: convert the model to BF16, F16 or F32 first"), False),
    ("unknown_dtype", {"a": tensor_entry("F31", [1], 0, 4)}, b"\0" * 4, None, ("has an unknown dtype", "'F31'"), True),
    ("float_dim", {"a": tensor_entry("F32", [1.5], 0, 4)}, b"\0" * 4, None,
     "shape must be a list of non-negative integers", True),
    ("three_offsets", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}}, b"\0" * 4, None,
     "data_offsets must be two integers", True),
    ("reversed_offsets", {"a": tensor_entry("U8", [0], 4, 0)}, b"\0" * 4, None, "invalid data_offsets [4, 0]", True),
    ("offsets_past_end", {"a": tensor_entry("F32", [2], 0, 8)}, b"\0" * 4, None,
     ("but the data section has", "data ends at byte 8", "has 4 bytes"), True),
    ("size_mismatch", {"a": tensor_entry("F32", [2], 0, 4)}, b"\0" * 4, None,
     ("bytes but data_offsets span", "F32[2] needs 8 bytes", "span 4;"), True),
    ("overlap", {"a": tensor_entry("F32", [2], 0, 8), "b": tensor_entry("F32", [1], 4, 8)}, b"\0" * 8, None,
     "overlaps the previous tensor's bytes", True),
    ("gap", {"a": tensor_entry("F32", [1], 4, 8)}, b"\0" * 8, None, ("bytes before tensor", "gap of 4 bytes"), True),
    ("trailing", {"a": F32x1}, b"\0" * 5, None, ("trailing bytes after the last tensor", ": 1 trailing"), True),
]


@pytest.mark.parametrize("case_id,header,data,length,words,damaged", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_file_is_one_line_naming_it_and_what_to_do(tmp_path: Path, surgeon, case_id: str, header,
                                                               data: bytes, length: int | None, words: str,
                                                               damaged: bool) -> None:
    path = tmp_path / "model.safetensors"
    if header is None:
        path.write_bytes(b"\1\2\3")
    else:
        write_raw(path, header, data, length=length)
    before = path.read_bytes()
    res = surgeon("inspect", path)
    assert res.code == 1 and len(res.err_lines) == 1, res.stderr
    line = res.err_lines[0]
    for w in (words,) if isinstance(words, str) else words:
        assert w in line, line
    assert line.startswith(f"error: {path}: "), line
    assert line.endswith(DAMAGED) is damaged, line
    assert path.read_bytes() == before


def test_what_is_not_a_regular_file(tmp_path: Path, surgeon) -> None:
    """A FIFO given as the model (reading it would block), and a folder where a model's shard should be."""
    os.mkfifo(tmp_path / "pipe.safetensors")
    res = surgeon("inspect", tmp_path / "pipe.safetensors")
    assert res.code == 1 and len(res.err_lines) == 1
    assert "pipe.safetensors: not a regular file; give a .safetensors file or a model folder" in res.stderr
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").mkdir()
    res = surgeon("inspect", tmp_path / "m")
    assert res.code == 1 and len(res.err_lines) == 1
    assert "model.safetensors: is not a regular file; a shard must be a file (or a link to one)" in res.stderr


def test_a_read_error_names_the_file_and_says_to_check_it(tmp_path: Path, surgeon, monkeypatch) -> None:
    """An I/O error (EIO from a failing disk) while reading the header; the CLI cannot make one, so open() fails."""
    path = write_raw(tmp_path / "model.safetensors", {"a": F32x1}, b"\0" * 4)

    def failing_open(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fmt, "open", failing_open, raising=False)
    res = surgeon("inspect", path)
    assert res.code == 1 and len(res.err_lines) == 1
    assert f"{path}: cannot read (Input/output error); check the file's permissions and the disk" in res.stderr


def test_a_file_that_shrinks_while_its_header_is_read(tmp_path: Path, monkeypatch) -> None:
    """The size is taken, then the header read: a writer truncating the file in between (simulated by a stale size)."""
    path = write_raw(tmp_path / "model.safetensors", {"a": F32x1}, b"\0" * 4)
    real = path.stat().st_size
    write_raw(path, b"{", b"", length=40)  # now too short for the header it declares
    monkeypatch.setattr(fmt, "_file_size", lambda f: real + 40)
    with pytest.raises(SurgeonError, match="file shrank while reading its header; is something still writing it"):
        fmt.parse_header(path)
