"""A pickle reader that admits only what a CIFAR python batch holds.

The CIFAR "python version" files are pickles, and unpickling runs whatever callables the
file names. This reader never calls pickle.load on a user file as is:

1. it walks the opcodes without running them (pickletools), refusing declared sizes beyond
   the end of the data and memo indices that would make the unpickler allocate a huge table;
2. it unpickles with find_class replaced by a table of stand-ins. Any other global is
   refused by name before the pickle can call it. The stand-ins for numpy record the array's
   shape, dtype and bytes and check them; the array is then built here with np.frombuffer.
   numpy's own __setstate__ never sees the file's data: it trusts the dtype flags a pickle
   gives it, and a forged flag makes numpy read uint8 bytes as object pointers.

Python 2 strings come back as bytes (encoding="bytes"), which the raw pixel data needs.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Callable
from math import prod

import numpy as np

from lipcert.errors import DatasetError

_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_BYTE_ORDERS = ("|", "<", ">", "=")


class _Refusal(Exception):
    """Raised inside the unpickler; restricted_loads adds the file name."""


class _Global:
    """An admitted global: a fixed callable that a pickle can call but never modify."""

    __slots__ = ("_call", "name")
    name: str
    _call: Callable[..., object]

    def __init__(self, name: str, call: Callable[..., object]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_call", call)

    def __setattr__(self, key: str, value: object) -> None:
        raise _Refusal(f"expected a plain CIFAR batch but the pickle sets {key!r} on {self.name}")

    def __call__(self, *args: object) -> object:
        return self._call(*args)


class _DtypeStub:
    """What numpy.dtype(code, align, copy) gives in the pickle; BUILD may set its byte order."""

    __slots__ = ("dtype",)
    __hash__ = None  # type: ignore[assignment]  # never a dict key or set member

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        # numpy writes (3, order, None, None, None, -1, -1, 0) for a plain numeric dtype;
        # older versions wrote 6 or 7 fields, newer ones add metadata (None) as a 9th.
        if not isinstance(state, tuple) or not 6 <= len(state) <= 9:
            raise _Refusal(f"expected a numpy dtype state tuple but found {state!r}")
        order = state[1].decode("latin-1") if isinstance(state[1], bytes) else state[1]
        structure = state[2:4] if len(state) == 6 else state[2:5]
        flags = state[7] if len(state) >= 8 else 0
        metadata = state[8] if len(state) == 9 else None
        plain = all(part is None for part in structure) and metadata is None
        if order not in _BYTE_ORDERS or not plain or type(flags) is not int or flags != 0:
            raise _Refusal(
                f"expected the state numpy writes for a plain numeric dtype, "
                f"(3, '|', None, None, None, -1, -1, 0), but found {state!r}"
            )
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder("<" if order == "<" else ">")


class _ArrayStub:
    """What _reconstruct gives in the pickle; BUILD supplies shape, dtype and bytes."""

    __slots__ = ("array",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # (1, shape, dtype, is_fortran, raw bytes); numpy before 1.0 left out the 1.
        if isinstance(state, tuple) and len(state) == 4:
            state = (1, *state)
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise _Refusal(
                f"expected a numpy array state (1, shape, dtype, ...) but found {state!r}"
            )
        _, shape, dtype, fortran, raw = state
        if isinstance(raw, str):
            raw = raw.encode("latin-1")  # how numpy reads Python 2 strings loaded as str
        shape_ok = isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
        if not shape_ok or not isinstance(dtype, _DtypeStub) or fortran not in (0, 1):
            raise _Refusal(
                f"expected a numpy array state (1, shape, dtype, is_fortran, bytes) but found "
                f"shape {shape!r} and is_fortran {fortran!r}"
            )
        if not isinstance(raw, bytes):
            raise _Refusal(f"expected the array's data as bytes but found {type(raw).__name__}")
        declared = prod(shape) * dtype.dtype.itemsize
        if declared != len(raw):
            raise _Refusal(
                f"expected {declared} bytes for an array of shape {shape!r} and dtype "
                f"{str(dtype.dtype)!r} but found {len(raw)}"
            )
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C")


def _numeric_dtype(spec: object, align: object = False, copy: object = False) -> _DtypeStub:
    # numpy pickles a dtype as dtype('u1', False, True) then BUILD; Python 2 wrote 0 and 1.
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    flags_ok = all(isinstance(flag, int) and flag in (0, 1) for flag in (align, copy))
    if not isinstance(spec, str) or not flags_ok:
        raise _Refusal(
            f"expected numpy.dtype(<type code>, <align>, <copy>) but found arguments "
            f"{(spec, align, copy)!r}"
        )
    try:
        dtype = np.dtype(spec)
    except TypeError as exc:
        raise _Refusal(f"expected a numpy type code but found {spec!r}") from exc
    if dtype.kind not in "biuf" or dtype.subdtype is not None or dtype.names is not None:
        raise _Refusal(f"expected a plain numeric dtype but found {spec!r}")
    return _DtypeStub(dtype)


def _refuse_ndarray_call(*args: object) -> object:
    raise _Refusal("expected numpy.ndarray only as an argument of _reconstruct, but it is called")


_NDARRAY = _Global("numpy.ndarray", _refuse_ndarray_call)


def _reconstruct(subtype: object, shape: object, dtype: object) -> _ArrayStub:
    # ndarray.__reduce__ always writes _reconstruct(ndarray, (0,), b'b') and then BUILD.
    if subtype is not _NDARRAY or not isinstance(shape, tuple) or shape != (0,):
        raise _Refusal(
            f"expected _reconstruct(numpy.ndarray, (0,), ...) as numpy writes it but found "
            f"arguments {(getattr(subtype, 'name', subtype), shape)!r}"
        )
    if not isinstance(dtype, (bytes, str)):
        raise _Refusal(f"expected a type code as _reconstruct's dtype but found {dtype!r}")
    return _ArrayStub()


def _latin1_encode(text: object, encoding: object = None) -> bytes:
    # Python 3 pickles bytes at protocols 0 to 2 as _codecs.encode(<str>, 'latin1').
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refusal(
            f"expected _codecs.encode(<str>, 'latin1') as pickle writes bytes but found "
            f"encoding {encoding!r}"
        )
    return text.encode("latin-1")


def _empty_bytes(*args: object) -> bytes:
    # Python 3 pickles b"" at protocols 0 to 2 as bytes() (from __builtin__, its Python 2 name).
    if args:
        raise _Refusal(
            f"expected bytes() with no arguments, as pickle writes b'', but found {args!r}"
        )
    return b""


_ADMITTED: dict[tuple[str, str], _Global] = {
    ("numpy.core.multiarray", "_reconstruct"): _Global(
        "numpy.core.multiarray._reconstruct", _reconstruct
    ),
    ("numpy._core.multiarray", "_reconstruct"): _Global(
        "numpy._core.multiarray._reconstruct", _reconstruct
    ),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", _numeric_dtype),
    ("_codecs", "encode"): _Global("_codecs.encode", _latin1_encode),
    ("__builtin__", "bytes"): _Global("__builtin__.bytes", _empty_bytes),
    ("builtins", "bytes"): _Global("builtins.bytes", _empty_bytes),
}

ADMITTED_GLOBALS: tuple[str, ...] = tuple(f"{module}.{name}" for module, name in _ADMITTED)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        admitted = _ADMITTED.get((module, name))
        if admitted is None:
            raise _Refusal(
                f"refused to unpickle: expected only the globals a CIFAR batch holds "
                f"({', '.join(ADMITTED_GLOBALS)}) but found forbidden global "
                f"{f'{module}.{name}'!r}"
            )
        return admitted

    def persistent_load(self, pid: object) -> object:
        raise _Refusal(f"expected no persistent ids in a CIFAR batch but found {pid!r}")


def _prescan(data: bytes) -> None:
    """Walk the opcodes without running them, so nothing allocates from a forged count.

    pickletools checks every declared length against the bytes that remain; a memo index
    above the number of opcodes read so far (picklers number them 0, 1, 2 ...) would make
    the C unpickler grow its memo table to that index.
    """
    for count, (opcode, arg, position) in enumerate(pickletools.genops(data)):
        if opcode.name in _PUT_OPCODES and isinstance(arg, int) and arg > count:
            raise _Refusal(
                f"expected memo indices numbered in order but found {opcode.name} {arg} "
                f"at byte {position}"
            )


def _resolve(obj: object, seen: dict[int, object]) -> object:
    """obj with every stub replaced by the numpy array or dtype it stands for."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise _Refusal("expected array data (BUILD) after _reconstruct but found none")
        return obj.array
    if isinstance(obj, _DtypeStub):
        return obj.dtype
    if not isinstance(obj, (list, dict, tuple)):
        return obj  # stubs are unhashable, so no set holds one
    if id(obj) in seen:
        return seen[id(obj)]
    seen[id(obj)] = obj  # a cycle back here keeps the original object
    if isinstance(obj, list):
        obj[:] = [_resolve(item, seen) for item in obj]
    elif isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _resolve(value, seen)
    else:
        seen[id(obj)] = tuple(_resolve(item, seen) for item in obj)
    return seen[id(obj)]


def restricted_loads(data: bytes, *, source: str) -> object:
    """Unpickle `data`, admitting only numeric numpy arrays, containers, strings and numbers.

    Every failure, including a malformed pickle, is a DatasetError naming `source`.
    """
    try:
        _prescan(data)
        loaded = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
        return _resolve(loaded, {})
    except _Refusal as exc:
        raise DatasetError(f"{source}: {exc}") from None
    except Exception as exc:
        # Only the stand-ins above can run, so any other exception means a malformed
        # file, whatever its type (UnpicklingError, ValueError, EOFError, MemoryError ...).
        raise DatasetError(
            f"{source}: expected a CIFAR python batch (a pickle) but it cannot be read: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
