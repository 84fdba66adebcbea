"""Fuzzing the parsers of untrusted bytes: nothing but DatasetError may escape.

Random bytes and random mutations of valid files go through the IDX parser (raw and gzip),
the restricted unpickler, the CIFAR batch checks, the binary records and the .npz reader.
A forged size must be refused, never allocated: a MemoryError would fail these tests.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from cifar_bytes import cifar10_batch, py2_dumps
from data_files import idx_bytes, images, labels
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcert.datasets import load_dataset
from lipcert.datasets.cifar import parse_binary_records, parse_python_batch
from lipcert.datasets.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx_stream
from lipcert.datasets.safe_pickle import restricted_loads
from lipcert.errors import DatasetError

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_IDX_IMAGES = idx_bytes(images(3, (4, 5)))
_IDX_LABELS = idx_bytes(labels(3).astype(np.uint8))
_PY2_BATCH = py2_dumps(cifar10_batch(images(2), [3, 9]))
_PY3_BATCH = pickle.dumps({"data": images(2).reshape(2, -1), "labels": [1, 2]}, protocol=4)


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """valid with a few bytes replaced (often in its first or last bytes), maybe cut or extended.

    Headers sit at the start of every format here, and a zip archive's directory at its end.
    """
    data = bytearray(valid)
    edits = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.integers(0, min(31, len(data) - 1)),
                    st.integers(max(0, len(data) - 64), len(data) - 1),
                    st.integers(0, len(data) - 1),
                ),
                st.one_of(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]), st.integers(0, 255)),
            ),
            max_size=6,
        )
    )
    for position, value in edits:
        data[position] = value
    end = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return bytes(data[:end]) + draw(st.binary(max_size=8))


def _parse_idx(data: bytes, magic: int, limit: int | None) -> None:
    stream = io.BytesIO(data)
    read_idx_stream(
        stream, source="f", magic=magic, limit=limit, exact_length=len(data), max_length=len(data)
    )


def _parse_idx_gz(compressed: bytes, magic: int, limit: int | None) -> None:
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
        read_idx_stream(
            stream,
            source="f",
            magic=magic,
            limit=limit,
            exact_length=None,
            max_length=len(compressed) * 1032,
        )


_limits = st.one_of(st.none(), st.integers(1, 5))
_magics = st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC])


@_FUZZ
@given(data=st.binary(max_size=64), magic=_magics, limit=_limits)
def test_idx_random_bytes(data: bytes, magic: int, limit: int | None) -> None:
    with contextlib.suppress(DatasetError):
        _parse_idx(data, magic, limit)


@_FUZZ
@given(data=st.one_of(_mutated(_IDX_IMAGES), _mutated(_IDX_LABELS)), magic=_magics, limit=_limits)
def test_idx_mutations(data: bytes, magic: int, limit: int | None) -> None:
    with contextlib.suppress(DatasetError):
        _parse_idx(data, magic, limit)


@_FUZZ
@given(
    data=st.one_of(
        _mutated(gzip.compress(_IDX_IMAGES, mtime=0)),
        _mutated(_IDX_IMAGES).map(lambda raw: gzip.compress(raw, mtime=0)),
    ),
    limit=_limits,
)
def test_idx_gzip_mutations(data: bytes, limit: int | None) -> None:
    with contextlib.suppress(DatasetError):
        _parse_idx_gz(data, IMAGES_MAGIC, limit)


@_FUZZ
@given(data=st.binary(max_size=128))
def test_unpickler_random_bytes(data: bytes) -> None:
    with contextlib.suppress(DatasetError):
        restricted_loads(data, source="f")


@_FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=64).map(lambda tail: b"\x80\x02" + tail),
        st.binary(max_size=64).map(lambda tail: b"\x80\x04" + tail),
    )
)
def test_unpickler_random_opcodes(data: bytes) -> None:
    with contextlib.suppress(DatasetError):
        restricted_loads(data, source="f")


@_FUZZ
@given(data=st.one_of(_mutated(_PY2_BATCH), _mutated(_PY3_BATCH)))
def test_cifar_batch_mutations(data: bytes) -> None:
    with contextlib.suppress(DatasetError):
        parse_python_batch(data, source="f", label_key="labels", num_classes=10)


@_FUZZ
@given(data=st.binary(max_size=7000), name=st.sampled_from(["cifar10", "cifar100"]))
def test_cifar_binary_random_bytes(data: bytes, name: str) -> None:
    with contextlib.suppress(DatasetError):
        parse_binary_records(data, source="f", name=name)


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("npz")


def _valid_npz() -> bytes:
    stream = io.BytesIO()
    np.savez(stream, x=images(3, (4, 4)), y=np.array([0, 1, 2]))
    return stream.getvalue()


@_FUZZ
@given(data=_mutated(_valid_npz()))
def test_npz_mutations(npz_dir: Path, data: bytes) -> None:
    path = npz_dir / "fuzz.npz"
    path.write_bytes(data)
    with contextlib.suppress(DatasetError):
        load_dataset(str(path))
