"""The restricted unpickler: what it admits, and the hostile pickles it refuses."""

from __future__ import annotations

import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cifar_bytes import cifar10_batch, py2_dumps

from lipcert.datasets import load_dataset
from lipcert.datasets.safe_pickle import restricted_loads
from lipcert.errors import DatasetError


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _call_pickle(module: str, name: str, argument: str | list[str]) -> bytes:
    """A protocol 2 pickle that calls module.name(argument) when loaded."""
    if isinstance(argument, list):
        encoded = b"](" + b"".join(_text(item) for item in argument) + b"e"  # list, APPENDS
    else:
        encoded = _text(argument)
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + encoded + b"\x85R."  # TUPLE1, REDUCE


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that create `marker` when a normal unpickler loads them."""
    return {
        "os.system": _call_pickle("os", "system", f"touch {marker}"),
        "builtins.eval": _call_pickle("builtins", "eval", f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _call_pickle("subprocess", "Popen", ["touch", str(marker)]),
    }


_GLOBALS = ["os.system", "builtins.eval", "subprocess.Popen"]


@pytest.mark.parametrize("global_name", _GLOBALS)
def test_payload_is_live_under_the_standard_unpickler(tmp_path: Path, global_name: str) -> None:
    # The control for the test below: these bytes do run code when unpickled normally.
    marker = tmp_path / "pwned"
    result = pickle.loads(_payloads(marker)[global_name])
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


@pytest.mark.parametrize("global_name", _GLOBALS)
def test_forbidden_global_is_refused_before_it_runs(tmp_path: Path, global_name: str) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(_payloads(marker)[global_name])
    with pytest.raises(
        DatasetError,
        match=rf"test_batch: refused to unpickle: .* but found forbidden global '{global_name}'$",
    ):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_stack_global_of_protocol_4_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return eval, (f"open({str(marker)!r}, 'w').close()",)

    blob = pickle.dumps({"data": Payload()}, protocol=4)
    assert b"\x93" in blob  # STACK_GLOBAL
    with pytest.raises(DatasetError, match=r"forbidden global 'builtins\.eval'"):
        restricted_loads(blob, source="f")
    assert not marker.exists()


def test_plain_values_load() -> None:
    value = {"a": [1, -2, 3.5, None, True], "b": (b"xy", "z"), "c": {"d": 2**70}}
    assert restricted_loads(pickle.dumps(value, protocol=4), source="f") == value


def test_numeric_arrays_load() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(
        restricted_loads(pickle.dumps(array, protocol=2), source="f"), array
    )


def test_object_arrays_are_refused() -> None:
    blob = pickle.dumps(np.array([1, "x"], dtype=object), protocol=2)
    with pytest.raises(DatasetError, match=r"^f: expected a plain numeric dtype but found 'O8'"):
        restricted_loads(blob, source="f")


def test_structured_dtype_is_refused() -> None:
    blob = pickle.dumps(np.zeros(2, dtype="u1,u1"), protocol=2)
    with pytest.raises(DatasetError, match=r"expected a plain numeric dtype but found 'V2'"):
        restricted_loads(blob, source="f")


def test_ndarray_cannot_be_called() -> None:
    blob = b"\x80\x02cnumpy\nndarray\nK\x05\x85R."  # numpy.ndarray((5,))
    with pytest.raises(DatasetError, match=r"expected numpy\.ndarray only as an argument of"):
        restricted_loads(blob, source="f")


def test_reconstruct_with_a_forged_shape_is_refused() -> None:
    # _reconstruct(ndarray, (10**9,), 'b') would allocate a gigabyte before BUILD.
    blob = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"J\x00\xca\x9a\x3b\x85U\x01b\x87R."
    )
    with pytest.raises(
        DatasetError, match=r"expected _reconstruct\(numpy\.ndarray, \(0,\), \.\.\.\)"
    ):
        restricted_loads(blob, source="f")


def test_build_cannot_modify_an_admitted_global() -> None:
    # BUILD with (None, {'name': ...}) would setattr on the object it is given.
    blob = b"\x80\x02cnumpy\ndtype\nN}" + _text("name") + _text("bad") + b"s\x86b."
    with pytest.raises(DatasetError, match=r"the pickle sets 'name' on numpy\.dtype"):
        restricted_loads(blob, source="f")


def test_codecs_encode_is_admitted_for_latin1_only() -> None:
    assert restricted_loads(pickle.dumps(b"\x00\xff", protocol=2), source="f") == b"\x00\xff"
    blob = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DatasetError, match=r"expected _codecs\.encode\(<str>, 'latin1'\)"):
        restricted_loads(blob, source="f")


def test_bytes_is_admitted_without_arguments_only() -> None:
    assert restricted_loads(pickle.dumps(b"", protocol=2), source="f") == b""
    blob = b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R."  # bytes(2**30)
    with pytest.raises(DatasetError, match=r"expected bytes\(\) with no arguments"):
        restricted_loads(blob, source="f")


def test_absurd_memo_index_is_refused() -> None:
    # LONG_BINPUT 2**31 would make the C unpickler grow its memo table to 2**32 entries.
    blob = b"\x80\x02K\x01r\x00\x00\x00\x80."
    with pytest.raises(DatasetError, match=r"expected memo indices numbered in order but found"):
        restricted_loads(blob, source="f")


def test_declared_length_beyond_the_data_is_refused() -> None:
    # BINBYTES8 declaring 2**60 bytes: refused before anything allocates them.
    blob = b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"abc."
    with pytest.raises(DatasetError, match=r"^f: expected a CIFAR python batch \(a pickle\)"):
        restricted_loads(blob, source="f")


def test_persistent_ids_are_refused() -> None:
    with pytest.raises(DatasetError, match=r"expected no persistent ids"):
        restricted_loads(b"\x80\x02X\x01\x00\x00\x00aQ.", source="f")


def test_real_layout_round_trips() -> None:
    pixels = np.arange(3072, dtype=np.uint8).reshape(1, 3072)
    loaded = restricted_loads(py2_dumps(cifar10_batch(pixels, [4])), source="f")
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded[b"data"], pixels)


def _py2_batch_bytes() -> bytes:
    return py2_dumps(cifar10_batch(np.zeros((2, 3072), np.uint8), [0, 1]))


def test_forged_dtype_flags_are_refused() -> None:
    # numpy's own dtype.__setstate__ accepts flags 1 (holds objects) on uint8 and would then
    # treat pixel bytes as object pointers.
    blob = _py2_batch_bytes()
    state = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    assert blob.count(state) == 1
    forged = blob.replace(state, state.replace(b"K\x00t", b"K\x01t"))
    with pytest.raises(
        DatasetError,
        match=r"^f: expected the state numpy writes for a plain numeric dtype, .* but found "
        r"\(3, b'\|', None, None, None, -1, -1, 1\)$",
    ):
        restricted_loads(forged, source="f")


def test_array_state_must_match_its_bytes() -> None:
    blob = _py2_batch_bytes()
    shape = b"(K\x01K\x02M\x00\x0c\x86"  # MARK, 1, (2, 3072)
    assert blob.count(shape) == 1
    forged = blob.replace(shape, b"(K\x01K\x03M\x00\x0c\x86")
    with pytest.raises(
        DatasetError,
        match=r"^f: expected 9216 bytes for an array of shape \(3, 3072\) and dtype 'uint8' but "
        r"found 6144$",
    ):
        restricted_loads(forged, source="f")


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4)), id="fortran"),
        pytest.param(np.arange(6, dtype=">u2").reshape(2, 3), id="big_endian"),
        pytest.param(np.array([True, False]), id="bool"),
        pytest.param(np.zeros((0, 3), np.float64), id="empty"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_array_layouts_round_trip(array: np.ndarray, protocol: int) -> None:
    loaded = restricted_loads(pickle.dumps(array, protocol=protocol), source="f")
    assert isinstance(loaded, np.ndarray)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)


def test_arrays_nested_in_containers_are_resolved() -> None:
    array = np.arange(3, dtype=np.int32)
    value = {"a": [array, (array, {"b": array})]}
    loaded = restricted_loads(pickle.dumps(value, protocol=2), source="f")
    assert isinstance(loaded, dict)
    inner = loaded["a"][1]
    assert isinstance(inner, tuple)
    np.testing.assert_array_equal(inner[1]["b"], array)
    assert loaded["a"][0] is inner[0]  # one array, shared as in the pickle


def test_reconstruct_without_build_is_refused() -> None:
    blob = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R."
    with pytest.raises(DatasetError, match=r"expected array data \(BUILD\) after _reconstruct"):
        restricted_loads(blob, source="f")
