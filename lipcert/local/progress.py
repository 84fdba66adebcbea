"""`certify --refine`: refinement of a certify result, with a progress bar on a console."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from lipcert.certify.metrics import Eps
from lipcert.certify.pipeline import CertifyResult
from lipcert.errors import UsageError
from lipcert.local.refine import RefineOptions, RefineResult, refine_result


def check_refine_options(
    refine: bool, budget: float | None, radius: float | None
) -> RefineOptions | None:
    """The refinement asked for by --refine / --refine-budget / --refine-radius, or None."""
    if budget is not None and not budget > 0:
        raise UsageError(f"expected --refine-budget > 0 (seconds) but got {budget!r}")
    if radius is not None and not radius > 0:
        raise UsageError(f"expected --refine-radius > 0 but got {radius!r}")
    if not refine and radius is None:
        if budget is not None:
            raise UsageError("--refine-budget needs --refine or --refine-radius")
        return None
    return RefineOptions(upper=radius, budget=budget)


def refine_with_progress(
    prepared: Any,
    result: CertifyResult,
    eps_list: list[Eps],
    options: RefineOptions,
    console: Console | None,
) -> tuple[CertifyResult, RefineResult]:
    """refine_result for a prepared certify run (its analysis, dataset and preprocessing),
    trying every eps of the run; a progress bar on `console` when there is one."""
    from dataclasses import replace

    options = replace(options, eps=tuple(e.value for e in eps_list))

    def run(on_sample: Any = None) -> tuple[CertifyResult, RefineResult]:
        return refine_result(
            result,
            prepared.analysis,
            prepared.dataset,
            prepared.preprocessing,
            eps_list,
            options,
            on_sample=on_sample,
        )

    if console is None:
        return run()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("refining (local bounds)"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("refine", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return run(advance)


__all__ = ["check_refine_options", "refine_with_progress"]
