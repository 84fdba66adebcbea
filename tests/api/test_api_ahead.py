"""The API's arrays and batches run onnxruntime one batch ahead as `lipcert certify` does
(`pipeline.evaluated_ahead`): the evaluator's `prefetch` is used, torch runs on one thread
meanwhile and gets its thread count back, and the numbers are bit for bit those of
evaluating the chunks in turn (ground truth: `certify_batch` called on each chunk, with
no running ahead) and those of the Dataset path (`pipeline.certify_dataset`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from api_models import NPZ, TAU8

import lipcert
from lipcert.certify.mcr_gap import McrTracker
from lipcert.certify.metrics import Eps
from lipcert.certify.pipeline import certified_spec, certify_batch, certify_dataset
from lipcert.errors import UsageError
from lipcert.evaluators.posterior import PosteriorEvaluator

EPS = [36 / 255, 72 / 255, 1.0]
THREADS = 2  # with one thread the evaluator does not run ahead (`prefetch`)
SIZE = 50


@pytest.fixture(scope="module")
def tau8() -> lipcert.Model:
    return lipcert.load(TAU8)


@pytest.fixture(scope="module")
def data() -> lipcert.datasets.Dataset:
    return lipcert.load_dataset(str(NPZ), limit=130)


class Spy:
    """Wraps PosteriorEvaluator.prefetch: counts the calls and torch's threads at each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[int] = []
        original = PosteriorEvaluator.prefetch
        spy = self

        def prefetch(evaluator: PosteriorEvaluator, batch: np.ndarray) -> None:
            spy.threads.append(torch.get_num_threads())
            original(evaluator, batch)

        monkeypatch.setattr(PosteriorEvaluator, "prefetch", prefetch)


def _pixels(data: Any, dtype: type[np.floating] = np.float32) -> np.ndarray:
    # as Dataset.batches makes them: divided by 255 in `dtype` (float64 with preprocessing)
    return data.images.astype(dtype) / dtype(255)


def _in_turn(
    model: lipcert.Model, x: np.ndarray, y: np.ndarray, preprocessing: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radius, allowance, MCR gap bounds) from certify_batch on each chunk in turn,
    with no prefetch (a fresh evaluator whose prefetch is never called)."""
    from lipcert.certify.pipeline import choose_evaluators

    chosen = choose_evaluators(model.loaded, model.analysis, "float32", threads=THREADS)
    assert isinstance(chosen.evaluator, PosteriorEvaluator)
    spec = certified_spec(chosen.spec, preprocessing)
    tracker = McrTracker(None)
    eps_values = np.array(EPS)
    radii, allowances = [], []
    for start in range(0, len(x), SIZE):
        chunk = x[start : start + SIZE]
        if preprocessing is not None:
            chunk = preprocessing.apply(chunk)
        certificates, allowance, _ = certify_batch(
            chosen.evaluator,
            spec,
            model.method(),
            chunk,
            eps_values,
            exact=chosen.exact,
            preprocessing=preprocessing,
            labels=y[start : start + SIZE],
            mcr=tracker,
        )
        radii.append(certificates.radius)
        allowances.append(allowance)
    assert not chosen.evaluator._ahead
    return np.concatenate(radii), np.concatenate(allowances), np.concatenate(tracker.gaps)


def _batches(x: np.ndarray, y: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A one-pass iterable (as a DataLoader's iterator), torch tensors, 100 then 30 samples:
    chunks of 50, 50 and 30, as the Dataset's batches of 50."""
    for start in (0, 100):
        stop = 100 if start == 0 else len(x)
        yield torch.from_numpy(x[start:stop]), torch.from_numpy(y[start:stop])


@pytest.mark.parametrize("normalised", [False, True])
def test_batches_run_ahead_with_the_numbers_of_evaluating_in_turn(
    tau8: lipcert.Model, data: Any, monkeypatch: pytest.MonkeyPatch, normalised: bool
) -> None:
    x, y = _pixels(data, np.float64 if normalised else np.float32), data.labels.astype(np.int64)
    options: dict[str, Any] = {"mean": 0.3, "std": 0.45} if normalised else {}
    preprocessing = lipcert.api.data.preprocessing_of(options.get("mean"), options.get("std"), 1)
    radius, allowance, gaps = _in_turn(tau8, x, y, preprocessing)
    spy = Spy(monkeypatch)
    torch.set_num_threads(2)
    report = lipcert.certify_dataset(
        tau8, _batches(x, y), EPS, batch_size=SIZE, threads=THREADS, **options
    )
    assert torch.get_num_threads() == 2  # restored
    assert spy.threads == [1, 1, 1]  # every chunk prefetched, torch on one thread meanwhile
    assert np.array_equal(report.samples.radius, radius)
    assert np.array_equal(report.result.allowance, allowance)
    assert report.result.mcr_gap is not None
    assert np.array_equal(report.result.mcr_gap, gaps)
    assert report.exact_samples > 0  # the float64 recomputation ran inside the loop

    # the Dataset path (`lipcert certify`'s) gives the same numbers
    evaluators = tau8._evaluators_for("float32", None, THREADS)
    through_dataset = certify_dataset(
        evaluators.evaluator,
        evaluators.spec,
        tau8.method(),
        data,
        [Eps(str(e), e) for e in EPS],
        batch_size=SIZE,
        preprocessing=preprocessing,
        exact=evaluators.exact,
    )
    assert np.array_equal(through_dataset.certificates.radius, radius)
    assert np.array_equal(through_dataset.allowance, allowance)
    assert torch.get_num_threads() == 2


def test_model_certify_runs_ahead(
    tau8: lipcert.Model, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _pixels(data), data.labels.astype(np.int64)
    radius, allowance, _ = _in_turn(tau8, x, y)
    spy = Spy(monkeypatch)
    torch.set_num_threads(2)
    batch = tau8.certify(x, y, eps=EPS, batch_size=SIZE, threads=THREADS)
    assert torch.get_num_threads() == 2
    assert spy.threads == [1, 1, 1]
    assert np.array_equal(batch.radius, radius)
    assert np.array_equal(batch.allowance, allowance)


def test_a_bad_batch_midway_restores_torch_threads(
    tau8: lipcert.Model, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _pixels(data), data.labels.astype(np.int64)
    spy = Spy(monkeypatch)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield x[:60], y[:60]
        yield x[60:], y[60:] + 100  # labels out of range: refused on reading it

    torch.set_num_threads(2)
    with pytest.raises(UsageError, match=r"labels in 0\.\.9"):
        lipcert.certify_dataset(tau8, batches(), EPS, batch_size=SIZE, threads=THREADS)
    assert torch.get_num_threads() == 2
    assert spy.threads and set(spy.threads) == {1}
