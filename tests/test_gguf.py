"""The GGUF reader: real files agree with the `gguf` package; every malformed-file case raises
tova.GGUFError (a ValueError) naming the file and the field at fault; fuzzed files never crash."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
import tova

# ---- a small valid file, written by gguf.GGUFWriter --------------------------------------------


def write_valid(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 65000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float32("test.f32", 1.5)
    w.add_float64("test.f64", -2.25)
    w.add_bool("test.bool", True)
    w.add_string("test.string_key", "héllo wörld")
    w.add_array("test.int_array", [1, 2, 3, 4])
    w.add_array("test.str_array", ["a", "bc", "déf"])
    w.add_array("test.nested", [[1, 2], [3, 4, 5]])
    w.add_array("test.float_array", [0.5, 1.5])
    rng = np.random.default_rng(0)
    w.add_tensor("tensor_alpha", rng.standard_normal((4, 64)).astype(np.float32))
    w.add_tensor("tensor_beta", rng.standard_normal((2, 32)).astype(np.float16))
    q = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("tensor_gamma", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture()
def valid_file(tmp_path: Path) -> Path:
    return write_valid(tmp_path / "valid.gguf")


def test_valid_file_matches_gguf_reader(valid_file: Path) -> None:
    f = tova.GGUFFile(valid_file)
    md = f.metadata
    assert md["test.u8"] == 200 and md["test.i8"] == -5
    assert md["test.u16"] == 65000 and md["test.i16"] == -30000
    assert md["test.u32"] == 4000000000 and md["test.i32"] == -2000000000
    assert md["test.u64"] == 2**63 + 5 and md["test.i64"] == -(2**62)
    assert md["test.f32"] == 1.5 and md["test.f64"] == -2.25
    assert md["test.bool"] is True
    assert md["test.string_key"] == "héllo wörld"
    assert md["test.int_array"] == [1, 2, 3, 4]
    assert md["test.str_array"] == ["a", "bc", "déf"]
    assert md["test.nested"] == [[1, 2], [3, 4, 5]]
    assert md["test.float_array"] == [0.5, 1.5]
    assert f.metadata_types["test.nested"] == "array[array]"
    r = gguf.GGUFReader(str(valid_file))
    assert set(f.tensors) == {t.name for t in r.tensors}
    for t in r.tensors:
        info = f.tensors[t.name]
        assert info.ne == tuple(int(x) for x in t.shape)
        assert info.type_id == int(t.tensor_type)
        assert info.nbytes == int(t.n_bytes)
        assert f.data_offset + info.offset == int(t.data_offset)
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
        np.testing.assert_array_equal(f.tensor(t.name), ref)
        raw = f.raw(t.name)
        assert raw.dtype == np.uint8 and raw.nbytes == info.nbytes
        assert not raw.flags.writeable
        np.testing.assert_array_equal(raw, np.asarray(t.data).view(np.uint8).reshape(-1))


def test_raw_is_zero_copy_and_keeps_file_alive(valid_file: Path) -> None:
    f = tova.GGUFFile(valid_file)
    raw = f.raw("tensor_alpha")
    assert raw.base is not None  # a view of the mapping, owned by the GGUFFile
    del f
    assert raw.sum() >= 0  # still readable: the array holds the file open


def test_missing_tensor_is_key_error(valid_file: Path) -> None:
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        tova.GGUFFile(valid_file).tensor("nope")


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        tova.GGUFFile("/nonexistent/model.gguf")
    with pytest.raises(FileNotFoundError, match="not a regular file \\(a directory\\)"):
        tova.GGUFFile(Path(__file__).parent)


# ---- malformed files: each case corrupts the valid file at a known field -----------------------


def _corrupt(tmp_path: Path, valid: Path, edit) -> Path:
    data = bytearray(valid.read_bytes())
    edit(data)
    out = tmp_path / "bad.gguf"
    out.write_bytes(bytes(data))
    return out


def _tensor_info_pos(data: bytearray, name: str) -> int:
    """Offset of the n_dims field of a tensor info (right after its name)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    i = data.find(key)
    assert i > 0
    return i + len(key)


def _kv_value_pos(data: bytearray, key: str) -> int:
    """Offset of the type field of a metadata entry (right after its key)."""
    k = struct.pack("<Q", len(key)) + key.encode()
    i = data.find(k)
    assert i > 0
    return i + len(k)


def _expect(path: Path, pattern: str) -> None:
    with pytest.raises(tova.GGUFError, match=pattern) as ei:
        tova.GGUFFile(path)
    assert str(path) in str(ei.value)  # every message names the file
    assert isinstance(ei.value, ValueError)


def test_bad_magic(tmp_path, valid_file):
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(0, 4), b"GGML")),
            "bad magic 'GGML': not a GGUF file")


def test_unsupported_version(tmp_path, valid_file):
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 1))),
            "unsupported GGUF version 1 \\(supported: 2 and 3\\)")
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 99))),
            "unsupported GGUF version 99")


def test_big_endian_file_is_named_as_such(tmp_path, valid_file):
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(4, 8), struct.pack(">I", 3))),
            "a big-endian GGUF file .*tova reads little-endian GGUF files only")


def test_a_path_that_is_not_utf8_opens(tmp_path, valid_file):
    """File names are bytes on Linux: one that is not UTF-8 (os.fsdecode gives a str with
    surrogate escapes) opens from str and from bytes, and comes back as given."""
    raw = os.fsencode(str(tmp_path)) + b"/bad\xffname.gguf"
    os.symlink(valid_file, raw)
    as_str = os.fsdecode(raw)
    f = tova.GGUFFile(as_str)
    assert f.path == as_str and f.version == tova.GGUFFile(raw).version == 3


@pytest.mark.parametrize("cut", [3, 10, 20, 60, 200])
def test_truncated_header(tmp_path, valid_file, cut):
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__delitem__(slice(cut, None))), "truncated")


def test_truncated_data(tmp_path, valid_file):
    # Cut the file 10 bytes before the end of the last tensor's data (the writer may pad after it).
    r = gguf.GGUFReader(str(valid_file))
    last = max(r.tensors, key=lambda t: t.data_offset)
    end = int(last.data_offset) + int(last.n_bytes)
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__delitem__(slice(end - 10, None))),
            f"tensor '{last.name}' data .* runs past the end of the file")


def test_string_longer_than_file(tmp_path, valid_file):
    def edit(d):
        p = _kv_value_pos(d, "test.string_key") + 4  # past the type: the string length
        d[p:p + 8] = struct.pack("<Q", 10**12)
    _expect(_corrupt(tmp_path, valid_file, edit), "test.string_key.*needs 1000000000000 bytes")


def test_key_longer_than_file(tmp_path, valid_file):
    def edit(d):
        k = struct.pack("<Q", len("test.u8")) + b"test.u8"
        i = d.find(k)
        d[i:i + 8] = struct.pack("<Q", 2**40)
    _expect(_corrupt(tmp_path, valid_file, edit), "metadata key .* file truncated|truncated: metadata key")


def test_array_longer_than_file(tmp_path, valid_file):
    def edit(d):
        p = _kv_value_pos(d, "test.int_array") + 4 + 4  # type, element type -> count
        d[p:p + 8] = struct.pack("<Q", 2**50)
    _expect(_corrupt(tmp_path, valid_file, edit), "'test.int_array': array of .* runs past the end")


def test_string_array_longer_than_file(tmp_path, valid_file):
    def edit(d):
        p = _kv_value_pos(d, "test.str_array") + 8
        d[p:p + 8] = struct.pack("<Q", 2**60)
    _expect(_corrupt(tmp_path, valid_file, edit), "'test.str_array': array of .* strings runs past")


def test_unknown_value_type(tmp_path, valid_file):
    def edit(d):
        p = _kv_value_pos(d, "test.u8")
        d[p:p + 4] = struct.pack("<I", 77)
    _expect(_corrupt(tmp_path, valid_file, edit), "'test.u8': unknown value type 77")


def test_bad_bool(tmp_path, valid_file):
    def edit(d):
        p = _kv_value_pos(d, "test.bool") + 4
        d[p] = 7
    _expect(_corrupt(tmp_path, valid_file, edit), "'test.bool': bool value 7")


def test_duplicate_key(tmp_path, valid_file):
    def edit(d):
        i = d.find(b"test.i16")
        d[i:i + 8] = b"test.u16"
    _expect(_corrupt(tmp_path, valid_file, edit), "duplicate metadata key 'test.u16'")


def test_duplicate_tensor_name(tmp_path, valid_file):
    # Rename tensor_gamma (12 bytes) to tensor_alpha (12 bytes): an exact duplicate.
    data = bytearray(valid_file.read_bytes())
    j = data.find(struct.pack("<Q", 12) + b"tensor_gamma")
    data[j:j + 8 + 12] = struct.pack("<Q", 12) + b"tensor_alpha"
    out = tmp_path / "dup.gguf"
    out.write_bytes(bytes(data))
    _expect(out, "duplicate tensor name 'tensor_alpha'")


def test_too_many_dims(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_alpha")
        d[p:p + 4] = struct.pack("<I", 7)
    _expect(_corrupt(tmp_path, valid_file, edit), "tensor 'tensor_alpha': 7 dimensions \\(expected 1 to 4\\)")


def test_unknown_tensor_type(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_alpha") + 4 + 2 * 8  # n_dims, two dims -> type
        d[p:p + 4] = struct.pack("<I", 1234)
    _expect(_corrupt(tmp_path, valid_file, edit), "tensor 'tensor_alpha': unknown tensor type id 1234")


def test_misaligned_offset(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_beta") + 4 + 2 * 8 + 4
        (off,) = struct.unpack("<Q", d[p:p + 8])
        d[p:p + 8] = struct.pack("<Q", off + 4)
    _expect(_corrupt(tmp_path, valid_file, edit), "tensor 'tensor_beta': data offset .* not a multiple of the alignment 32")


def test_offset_past_end(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_beta") + 4 + 2 * 8 + 4
        d[p:p + 8] = struct.pack("<Q", 2**40)
    _expect(_corrupt(tmp_path, valid_file, edit), "tensor 'tensor_beta' data .* runs past the end")


def test_dimension_product_overflow(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_alpha") + 4
        d[p:p + 8] = struct.pack("<Q", 2**40)      # ne0 (a multiple of the block size 1)
        d[p + 8:p + 16] = struct.pack("<Q", 2**40)  # ne1: product 2**80 overflows int64
    _expect(_corrupt(tmp_path, valid_file, edit), "tensor 'tensor_alpha': shape .* overflows")


def test_negative_dimension(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_alpha") + 4
        d[p:p + 8] = struct.pack("<q", -64)
    _expect(_corrupt(tmp_path, valid_file, edit), "dimension 0 is negative or too large")


def test_row_not_multiple_of_block(tmp_path, valid_file):
    def edit(d):
        p = _tensor_info_pos(d, "tensor_gamma") + 4
        d[p:p + 8] = struct.pack("<Q", 48)  # Q8_0 rows must be multiples of 32
    _expect(_corrupt(tmp_path, valid_file, edit), "row length 48 is not a multiple of the Q8_0 block size 32")


def test_bad_alignment_value(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), arch="llama")
    w.add_uint32("general.alignment", 24)
    w.add_tensor("t", np.zeros((2, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect(tmp_path / "a.gguf", "general.alignment must be a positive power of two, found 24")


def test_impossible_counts(tmp_path, valid_file):
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(8, 16), struct.pack("<Q", 2**62))),
            "tensor count .* is impossible")
    _expect(_corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(16, 24), struct.pack("<Q", 2**62))),
            "metadata count .* is impossible")


def test_version2_file_reads(tmp_path, valid_file):
    # Version 2 has the same layout as 3 for little-endian files.
    path = _corrupt(tmp_path, valid_file, lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 2)))
    assert tova.GGUFFile(path).version == 2


# ---- fuzzing: random byte flips and truncations never crash ------------------------------------


def test_fuzz_no_crash(tmp_path, valid_file):
    """A few thousand mutated files, each parsed in a child process (so a crash is a failure of
    this test, not of the test run): each must either load (and dequantize every tensor) or raise
    ValueError."""
    script = Path(__file__).parent / "tools" / "fuzz_gguf.py"
    r = subprocess.run([sys.executable, str(script), str(valid_file), "3000", "1234"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"fuzzer died (rc={r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "cases=3000" in r.stdout, r.stdout


# ---- the real models -----------------------------------------------------------------------------


def _metadata_from_reader(r: gguf.GGUFReader) -> dict:
    out = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = field.contents()
    return out


@pytest.mark.model
@pytest.mark.parametrize("fixture", ["smollm2_path", "gemma3_path"])
def test_real_model_matches_gguf_package(fixture, request, gguf_reader):
    path = request.getfixturevalue(fixture)
    f = tova.GGUFFile(path)
    r = gguf_reader(path)
    ref_md = _metadata_from_reader(r)
    md = f.metadata
    assert list(md) == list(ref_md)
    for k, v in ref_md.items():
        if isinstance(v, float):
            assert md[k] == pytest.approx(v, rel=1e-7), k
        else:
            assert md[k] == v, k
    assert list(f.tensors) == [t.name for t in r.tensors]
    for t in r.tensors:
        info = f.tensors[t.name]
        assert info.ne == tuple(int(x) for x in t.shape), t.name
        assert info.type_id == int(t.tensor_type), t.name
        assert info.nbytes == int(t.n_bytes), t.name
        assert f.data_offset + info.offset == int(t.data_offset), t.name
        # Every tensor dequantizes bit-for-bit like the gguf package: all of its rows, or for a
        # tensor of over 4M values (Gemma 3's 262k-row embedding: 20 s of NumPy) 1,024 rows
        # spread over it and its last row (the gguf package's arrays are one row of blocks per
        # index of the first axis).
        got = f.tensor(t.name)
        assert got.dtype == np.float32
        rows = np.arange(t.data.shape[0])
        if int(t.n_elements) > 1 << 22 and t.data.ndim == 2:
            rows = np.unique(np.append(np.linspace(0, len(rows) - 1, 1024).astype(np.int64), len(rows) - 1))
        ref = gguf.quants.dequantize(t.data[rows], t.tensor_type)
        np.testing.assert_array_equal(got.reshape(t.data.shape[0], -1)[rows].reshape(-1),
                                      ref.reshape(-1).astype(np.float32), err_msg=t.name)
