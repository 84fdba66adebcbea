"""CIFAR python batches byte for byte as the real files are: Python 2 cPickle, protocol 2.

The real files were written by cPickle with numpy 1.x. This module emits the same opcodes
by hand, so the tests read exactly what users download, whatever the running Python and
numpy would write today:

- PROTO 2; a dict with keys and values as Python 2 str (SHORT_BINSTRING 'U', or BINSTRING
  'T' from 256 bytes on); items batched in MARK ... SETITEMS, lists in MARK ... APPENDS,
  1000 at a time, as cPickle's batch_dict / batch_list do;
- an ndarray as numpy 1.x reduces it: GLOBAL 'numpy.core.multiarray\\n_reconstruct\\n',
  GLOBAL 'numpy\\nndarray\\n', (0,), 'b', REDUCE, then BUILD with (1, shape,
  dtype('u1', 0, 1) BUILT with (3, '|', None, None, None, -1, -1, 0), False, raw bytes);
- cPickle memoizes (BINPUT, numbered from 1) only objects referenced elsewhere: the
  temporaries numpy's reduce creates ('b', 'u1', '|', the raw bytes) and one-character
  strings are written without BINPUT.
"""

from __future__ import annotations

import struct

import numpy as np

_BATCH = 1000


class Py2Pickler:
    """Writes dicts, lists, str, bytes (both as Python 2 str), ints, bools and ndarrays."""

    def __init__(self) -> None:
        self._out = bytearray(b"\x80\x02")
        self._next_memo = 1
        self._globals: dict[str, int] = {}

    def dumps(self, obj: object) -> bytes:
        self._save(obj)
        self._out += b"."
        return bytes(self._out)

    def _put(self) -> int:
        index = self._next_memo
        self._next_memo += 1
        self._out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)
        return index

    def _global(self, module: str, name: str) -> None:
        key = f"{module}\n{name}\n"
        if key in self._globals:
            index = self._globals[key]
            self._out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)
            return
        self._out += b"c" + key.encode("ascii")
        self._globals[key] = self._put()

    def _string(self, text: bytes, *, memoize: bool = True) -> None:
        if len(text) < 256:
            self._out += b"U" + bytes([len(text)]) + text
        else:
            self._out += b"T" + struct.pack("<i", len(text)) + text
        if memoize and len(text) > 1:
            self._put()

    def _int(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self._out += b"K" + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self._out += b"M" + struct.pack("<H", value)
        else:
            self._out += b"J" + struct.pack("<i", value)

    def _save(self, obj: object) -> None:
        if isinstance(obj, bool):
            self._out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, str):
            self._string(obj.encode("latin-1"))
        elif isinstance(obj, bytes):
            self._string(obj)
        elif isinstance(obj, list):
            self._list(obj)
        elif isinstance(obj, dict):
            self._dict(obj)
        elif isinstance(obj, np.ndarray):
            self._ndarray(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} as Python 2 cPickle did")

    def _list(self, items: list[object]) -> None:
        self._out += b"]"
        self._put()
        if len(items) == 1:
            self._save(items[0])
            self._out += b"a"
            return
        for start in range(0, len(items), _BATCH):
            self._out += b"("
            for item in items[start : start + _BATCH]:
                self._save(item)
            self._out += b"e"

    def _dict(self, mapping: dict[object, object]) -> None:
        self._out += b"}"
        self._put()
        items = list(mapping.items())
        if len(items) == 1:
            self._save(items[0][0])
            self._save(items[0][1])
            self._out += b"s"
            return
        for start in range(0, len(items), _BATCH):
            self._out += b"("
            for key, value in items[start : start + _BATCH]:
                self._save(key)
                self._save(value)
            self._out += b"u"

    def _tuple_of_ints(self, values: tuple[int, ...]) -> None:
        if 1 <= len(values) <= 3:
            for value in values:
                self._int(value)
            self._out += bytes([0x84 + len(values)])  # TUPLE1, TUPLE2, TUPLE3
        else:
            self._out += b"("
            for value in values:
                self._int(value)
            self._out += b"t"

    def _ndarray(self, array: np.ndarray) -> None:
        if array.dtype != np.uint8:
            raise TypeError("only uint8 arrays, as in the CIFAR batches")
        self._global("numpy.core.multiarray", "_reconstruct")
        self._global("numpy", "ndarray")
        self._out += b"K\x00\x85"  # (0,)
        self._string(b"b", memoize=False)
        self._out += b"\x87R"  # TUPLE3, REDUCE
        self._put()
        self._out += b"(K\x01"  # MARK, state version 1
        self._tuple_of_ints(tuple(int(d) for d in array.shape))
        self._global("numpy", "dtype")
        self._string(b"u1", memoize=False)
        self._out += b"K\x00K\x01\x87R"  # 0, 1, TUPLE3, REDUCE
        self._put()
        self._out += b"(K\x03"  # MARK, dtype state version 3
        self._string(b"|", memoize=False)
        self._out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # ..., TUPLE, BUILD
        self._out += b"\x89"  # NEWFALSE: not Fortran order
        self._string(np.ascontiguousarray(array).tobytes(), memoize=False)
        self._out += b"tb"  # TUPLE, BUILD


def py2_dumps(obj: object) -> bytes:
    """obj pickled as Python 2 cPickle.dump(obj, f, 2) with numpy 1.x wrote it."""
    return Py2Pickler().dumps(obj)


def cifar10_batch(
    images: np.ndarray, labels: list[int], batch_label: str = "testing batch 1 of 1"
) -> dict[str, object]:
    """A CIFAR-10 batch dict, keys in the real files' order."""
    return {
        "batch_label": batch_label,
        "labels": labels,
        "data": images.reshape(len(images), -1),
        "filenames": [f"image_{i:05d}.png" for i in range(len(images))],
    }


def cifar100_batch(
    images: np.ndarray,
    fine: list[int],
    coarse: list[int],
    batch_label: str = "testing batch 1 of 1",
) -> dict[str, object]:
    """A CIFAR-100 batch dict, keys in the real files' order."""
    return {
        "filenames": [f"image_{i:05d}.png" for i in range(len(images))],
        "batch_label": batch_label,
        "fine_labels": fine,
        "coarse_labels": coarse,
        "data": images.reshape(len(images), -1),
    }
