"""The `lipcert` command line: parse, call the library, render, map errors to exit codes.

No maths here. Reports go to stdout (to stderr with --json, whose document is then all of
stdout); progress, warnings and errors go to stderr. Every error is one line
`ErrorType: message`, with exit code 2 (usage, model or data), 1 (a check failed) or 3 (a bug
in lipcert, with a request to report it).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from lipcert import __version__
from lipcert.errors import ExitCode, LipcertError

try:  # newer typer vendors click
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - typer with click as a dependency
    from click.exceptions import ClickException as _ClickException  # type: ignore[assignment,no-redef,unused-ignore]


class OneLineErrors(TyperGroup):
    """Usage errors of the command line itself (typer's and click's) as one line, exit 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `lipcert` alone: the help
                sys.stdout.write(exc.format_message() + "\n")
                sys.exit(0)
            context = getattr(exc, "ctx", None)
            where = context.command_path if context is not None else "lipcert"
            sys.stderr.write(
                f"UsageError: {' '.join(exc.format_message().split())} (see '{where} --help')\n"
            )
            sys.exit(int(ExitCode.USAGE_OR_INPUT))
        except typer.Abort:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="lipcert",
    cls=OneLineErrors,
    help="Robustness certificates for 1-Lipschitz neural networks: sound Lipschitz bounds, "
    "certified radii, certified accuracy and CI gates.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

stderr = Console(stderr=True)
DEFAULT_ATTACK_LIMIT = 200


def stdout_console() -> Console:
    """The report's console: stdout, its width from the terminal or $COLUMNS (80 when piped)."""
    return Console(highlight=False)


ModelArg = Annotated[
    Path, typer.Argument(help="An .onnx file or a PyTorch checkpoint.", show_default=False)
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Per-sample input shape C,H,W (d for vector inputs); taken from the model when it "
        "is fixed.",
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="package.module:factory (or file.py:factory) building the module for a "
        "state_dict or safetensors checkpoint.",
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-model",
        help="Allow formats that can run code when loaded (pickled modules, TorchScript, .pt2).",
    ),
]
TracebackOpt = Annotated[
    bool, typer.Option("--traceback", help="Show the full traceback of an error.")
]
_DATASET_HELP = (
    "cifar10, cifar100, mnist, fashion-mnist, an .npz file with arrays x and y (x images, or "
    "(N, d) features), a .csv file of features with a label column, or imagefolder:PATH "
    "(one sub-folder of images per class)."
)
DatasetOpt = Annotated[str, typer.Option("--dataset", help=_DATASET_HELP, show_default=False)]
CertifyDatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset", help=_DATASET_HELP + " Required here or in [tool.lipcert].", show_default=False
    ),
]
LabelColumnOpt = Annotated[
    str | None,
    typer.Option("--label-column", help="The label column of a .csv dataset (default label)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A TOML file with a [tool.lipcert] table (default: the nearest pyproject.toml "
        "with one, from here up to the repository root).",
    ),
]
NoConfigOpt = Annotated[bool, typer.Option("--no-config", help="Read no [tool.lipcert] table.")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Folder holding the dataset files.")
]
SplitOpt = Annotated[str | None, typer.Option(help="test or train (default test).")]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        help="Mean per channel (per feature for tabular data) subtracted before the model; "
        "part of the certified function."
    ),
]
StdOpt = Annotated[
    str | None,
    typer.Option(
        help="Std per channel (per feature) the input is divided by; part of the certified "
        "function."
    ),
]
CertificateOpt = Annotated[
    str | None,
    typer.Option(help="auto, pairwise (needs a linear head) or global (default auto)."),
]
MarginsOpt = Annotated[
    str | None,
    typer.Option(
        help="float32 (default): onnxruntime and a worst-case rounding allowance (fast); "
        "float64: the graph in float64, a negligible allowance, tighter radii (about 5x slower)."
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="cpu (default) or cuda[:N]: on cuda the graph runs in float64 on the GPU (TF32 and "
        "cuDNN off), its first batch checked against onnxruntime on the CPU.",
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Shard the dataset over a Ray cluster: 'local' starts one here, else its address "
        "(e.g. auto, ray://host:10001). Needs pip install 'lipcert[ray]'.",
    ),
]
ResizeOpt = Annotated[
    int | None,
    typer.Option(
        "--resize",
        help="imagefolder: resize the shorter side to this many pixels "
        "(default round(crop / 0.875): 256 for 224).",
    ),
]
CropOpt = Annotated[
    int | None,
    typer.Option(
        "--crop",
        help="imagefolder: centre crop of this size after --resize "
        "(default the model's input size, else 224).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print a JSON document on stdout (and the report, if any, on stderr)."
    ),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Draw certified accuracy against radius into this .png or .svg file "
        '(needs matplotlib: pip install "lipcert[plot]").',
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No report and no progress.")]


@contextmanager
def reported_errors(show_traceback: bool) -> Iterator[None]:
    """Turn lipcert errors into one line on stderr and their exit code."""
    try:
        yield
    except LipcertError as exc:
        _fail(exc, int(exc.exit_code), show_traceback)
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug in lipcert: its own exit code, and a way to report it
        _fail(
            exc,
            int(ExitCode.INTERNAL_ERROR),
            show_traceback,
            prefix="internal error (a bug in lipcert) ",
            hint="; please report it to lipcert's maintainers with the output of --traceback",
        )


def _fail(
    exc: BaseException, code: int, show_traceback: bool, prefix: str = "", hint: str = ""
) -> NoReturn:
    if show_traceback:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    # Plain text, never wrapped: one line whatever the terminal's width.
    message = " ".join(f"{prefix}{type(exc).__name__}: {exc}{hint}".split())
    sys.stderr.write(message + "\n")
    raise typer.Exit(code) from None


def _warn(message: str) -> None:
    sys.stderr.write(" ".join(f"warning: {message}".split()) + "\n")


def _load(model: Path, input_shape: str | None, arch: str | None, trust_model: bool) -> Any:
    from lipcert import api
    from lipcert.certify.command import parse_input_shape

    return api.load(model, input_shape=parse_input_shape(input_shape), arch=arch, trust=trust_model)


def _emit_json(payload: dict[str, Any]) -> None:
    from lipcert.reports.format import json_numbers

    typer.echo(json.dumps(json_numbers(payload), indent=2, allow_nan=False))


@app.command()
def verify(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_model: TrustOpt = False,
    expect: Annotated[
        float, typer.Option(help="The Lipschitz constant the model should have.")
    ] = 1.0,
    tol: Annotated[float, typer.Option(help="Relative tolerance on --expect.")] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object on stdout.")] = False,
    empirical: Annotated[
        bool,
        typer.Option(
            "--empirical",
            help="Also search a lower bound by gradient ascent (shows tightness; never certifies).",
        ),
    ] = False,
    details: Annotated[
        bool,
        typer.Option(
            "--details",
            help="List the ops each recognised pattern covers, and every reshape, in the table.",
        ),
    ] = False,
    show_traceback: TracebackOpt = False,
) -> None:
    """Compute a guaranteed Lipschitz bound of MODEL, layer by layer.

    Exit 0 when the logit vector's bound is at most EXPECT * (1 + TOL), 1 when above,
    2 on usage, load or unsupported-op errors, 3 on a bug in lipcert.
    """
    from lipcert.errors import UsageError
    from lipcert.reports import verify_report

    with reported_errors(show_traceback):
        if not (0 < expect < float("inf")) or not (0 <= tol < float("inf")):
            raise UsageError(
                f"expected a finite --expect > 0 and --tol >= 0 but got {expect!r} and {tol!r}"
            )
        bounded = _load(model, input_shape, arch, trust_model)
        lower = None
        if empirical:
            with stderr.status("searching an empirical lower bound..."):
                lower = bounded.empirical_lower_bound()
        result = verify_report.verdict(bounded.spec, expect, tol)
        loaded, analysis = bounded.loaded, bounded.analysis
        if as_json:
            _emit_json(verify_report.to_json(loaded, analysis, result, lower))
        else:
            verify_report.render(stdout_console(), loaded, analysis, result, lower, details=details)
    raise typer.Exit(int(ExitCode.PASSED if result.passed else ExitCode.CHECK_FAILED))


@app.command()
def certify(
    model: ModelArg,
    dataset: CertifyDatasetOpt = None,
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    label_column: LabelColumnOpt = None,
    limit: Annotated[int | None, typer.Option(help="Certify only the first N samples.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Samples per inference batch (default 256).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="onnxruntime threads (default all cores).")
    ] = None,
    eps: Annotated[
        str | None,
        typer.Option(
            help="Radii for certified accuracy, e.g. 36/255,72/255 "
            "(default 36/255,72/255,108/255,1)."
        ),
    ] = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    certificate: CertificateOpt = None,
    margins: MarginsOpt = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write one row per sample to this CSV file.")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--output-format",
            help="text (the report); github (the report, then one ::error/::notice annotation "
            "per gate for GitHub Actions); junit (JUnit XML on stdout, one test case per gate; "
            "the report goes to stderr).",
        ),
    ] = "text",
    plot: PlotOpt = None,
    min_certified_accuracy: Annotated[
        float | None,
        typer.Option(
            "--min-certified-accuracy",
            help="Gate: exit 1 when certified accuracy at --gate-eps is below this fraction "
            "(0 to 1).",
        ),
    ] = None,
    gate_eps: Annotated[
        str | None,
        typer.Option(
            "--gate-eps",
            help="The eps of the certified-accuracy gate (default the first --eps); needs "
            "--min-certified-accuracy.",
        ),
    ] = None,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            "--min-accuracy", help="Gate: exit 1 when clean accuracy is below this fraction."
        ),
    ] = None,
    min_mcr: Annotated[
        float | None,
        typer.Option("--min-mcr", help="Gate: exit 1 when the MCR (a radius) is below this."),
    ] = None,
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_model: TrustOpt = False,
    config: ConfigOpt = None,
    no_config: NoConfigOpt = False,
    refine: Annotated[
        bool,
        typer.Option(
            "--refine",
            help="Then try local certificates (linear bounds over the L2 ball) for the samples "
            "whose radius is below an --eps: slower, never larger than proven.",
        ),
    ] = False,
    refine_budget: Annotated[
        float | None,
        typer.Option(
            "--refine-budget",
            help="Seconds for the whole refinement; samples not reached keep their radius.",
        ),
    ] = None,
    refine_radius: Annotated[
        float | None,
        typer.Option(
            "--refine-radius",
            help="Also bisect each refined radius up to this limit (implies --refine).",
        ),
    ] = None,
    device: DeviceOpt = None,
    ray: RayOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    mcr_tolerance: Annotated[
        float | None,
        typer.Option(
            "--mcr-tolerance",
            help="Also recompute in float64 the samples of largest allowance until the MCR is "
            "guaranteed within this fraction of the exact function's (e.g. 0.005); slower.",
        ),
    ] = None,
    show_traceback: TracebackOpt = False,
) -> None:
    """Certify every sample of a dataset: radii, certified accuracy, MCR, and CI gates.

    Exit 0 when every gate passes (or none is set), 1 when a gate fails, 2 on usage, model
    or data errors, 3 on a bug in lipcert. Defaults for the options may come from the
    [tool.lipcert] table of the nearest pyproject.toml (see --config).
    """
    from lipcert import api
    from lipcert.certify.command import CertifyRequest, resolve_certify
    from lipcert.reports import certify_report

    with reported_errors(show_traceback):
        from lipcert.errors import UsageError
        from lipcert.reports.ci_formats import FORMATS, github_annotations, junit_xml

        if output_format not in FORMATS:
            raise UsageError(
                f"expected --output-format text, github or junit but got {output_format!r}"
            )
        if as_json and output_format != "text":
            raise UsageError("expected --json or --output-format, not both: each owns stdout")
        if plot is not None:
            _check_plot(plot, [("the model", model), ("the dataset", dataset)])
        options = resolve_certify(
            CertifyRequest(
                model=model,
                dataset=dataset,
                data_dir=data_dir,
                split=split,
                limit=limit,
                batch_size=batch_size,
                threads=threads,
                eps=eps,
                mean=mean,
                std=std,
                certificate=certificate,
                csv_path=csv_path,
                min_certified_accuracy=min_certified_accuracy,
                gate_eps=gate_eps,
                min_accuracy=min_accuracy,
                min_mcr=min_mcr,
                input_shape=input_shape,
                arch=arch,
                trust_model=trust_model,
                margins=margins,
                label_column=label_column,
                config_path=config,
                no_config=no_config,
                refine=refine,
                refine_budget=refine_budget,
                refine_radius=refine_radius,
                device=device,
                ray=ray,
                resize=resize,
                crop=crop,
                mcr_tolerance=mcr_tolerance,
            )
        )
        request = options.request
        data = _load_dataset(request)
        bounded = _load_for(request, data)
        progress = None if quiet else stderr
        label = "certifying" if request.ray is None else "certifying on Ray"
        with _progress(progress, [(label, len(data))], eta=request.ray is None) as (on_batch,):
            report = api.certify_dataset(
                bounded,
                data,
                options.eps,
                precision=request.margins or "float32",  # type: ignore[arg-type]  # checked
                certificate=options.certificate,  # type: ignore[arg-type]  # checked
                batch_size=options.batch_size,
                **_preprocessing(request.mean, request.std, data),
                threads=request.threads,
                device=request.device,
                ray=request.ray,
                on_batch=on_batch,
                mcr_tolerance=request.mcr_tolerance,
            )
        if options.refine:
            with _progress(progress, [("refining (local bounds)", None)]) as (on_sample,):
                report = report.refine(
                    budget=request.refine_budget,
                    radius=request.refine_radius,
                    on_sample=on_sample,
                )
        gates = report.gates(
            min_accuracy=request.min_accuracy,
            min_certified_accuracy=request.min_certified_accuracy,
            gate_eps=options.gate_eps,
            min_mcr=request.min_mcr,
        )
        context = certify_report.Context(
            model=str(request.model),
            dataset=data,
            preprocessing=report.preprocessing,
            notes=report.notes,
            precision=report.precision,
            config=None if options.config.path is None else str(options.config.path),
            refinement=report.refinement,
        )
        if request.csv_path is not None:
            report.to_csv(request.csv_path)
        summary = certify_report.markdown(context, report.result, gates)
        warnings = _append_step_summary(options, summary)
        if plot is not None:
            from lipcert.plots import plot_certified_accuracy

            plot_certified_accuracy({str(model): report}, plot, eps=[e.value for e in report.eps])
        for warning in warnings:
            _warn(warning)
        if not quiet:
            console = stderr if as_json or output_format == "junit" else stdout_console()
            certify_report.render(console, context, report.result, gates)
        if as_json:
            _emit_json(certify_report.to_json(context, report.result, gates))
        elif output_format == "github":
            for line in github_annotations(gates):
                typer.echo(line)
        elif output_format == "junit":
            typer.echo(junit_xml(gates, model=str(model), seconds=report.seconds))
        failed = [gate for gate in gates if not gate.passed]
        if failed:
            if quiet:  # else the report has said it, once
                from lipcert.errors import GateError

                raise GateError("; ".join(gate.message() for gate in failed))
            raise typer.Exit(int(ExitCode.CHECK_FAILED))
    raise typer.Exit(int(ExitCode.PASSED))


def _load_dataset(request: Any) -> Any:
    """The dataset of a certify or attack request, through the API."""
    from lipcert import api
    from lipcert.certify.command import declared_shape

    assert request.dataset is not None  # checked with the other options
    return api.load_dataset(
        request.dataset,
        split=request.split or "test",
        data_dir=request.data_dir,
        limit=request.limit,
        label_column=request.label_column,
        resize=request.resize,
        crop=request.crop,
        model_shape=declared_shape(request),
    )


def _load_for(request: Any, data: Any) -> Any:
    """The model at the dataset's sample shape (or --input-shape, which must match it)."""
    from lipcert import api
    from lipcert.certify.command import parse_input_shape
    from lipcert.errors import DatasetError, ShapeError

    image_shape = tuple(int(d) for d in data.images.shape[1:])
    what = "features" if data.is_features else "images"
    given = parse_input_shape(request.input_shape)
    if given is not None and given != image_shape:
        raise DatasetError(
            f"--input-shape {given!r} differs from the {what} of {data.name!r}, {image_shape!r}"
        )
    try:
        return api.load(
            request.model, input_shape=image_shape, arch=request.arch, trust=request.trust_model
        )
    except ShapeError as exc:
        raise DatasetError(f"the {what} of {data.name!r} do not fit the model: {exc}") from None


def _preprocessing(mean: str | None, std: str | None, data: Any) -> dict[str, Any]:
    """--mean and --std as the API's mean= and std= (parsed here, with their messages)."""
    from lipcert.certify.command import parse_mean_std

    parsed = parse_mean_std(
        mean,
        std,
        int(data.images.shape[1]),
        per="feature" if data.is_features else "channel",
    )
    if parsed is None:
        return {}
    return {"mean": parsed[0], "std": parsed[1]}


def _append_step_summary(options: Any, text: str) -> list[str]:
    """Append `text` to $GITHUB_STEP_SUMMARY when set; warnings for what went wrong."""
    import os

    from lipcert.certify.command import step_summary_clash
    from lipcert.reports.files import append_text

    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary_file:
        return []
    clash = step_summary_clash(summary_file, options)
    if clash:
        return [f"$GITHUB_STEP_SUMMARY {summary_file!r} is {clash}: the summary was not appended"]
    try:
        append_text(summary_file, text)
    except OSError as exc:
        return [
            f"cannot append the summary to $GITHUB_STEP_SUMMARY {summary_file!r}: "
            f"{exc.strerror or exc}"
        ]
    return []


@contextmanager
def _progress(
    console: Console | None, phases: Sequence[tuple[str, int | None]], *, eta: bool = False
) -> Iterator[list[Any]]:
    """Transient progress bars on `console`, one per (label, total) phase (none when
    `console` is None), and the callbacks that advance them: `callback(n)` by n samples, or
    `callback(done, total)`. The bars show from the first callback on, so that an error
    raised before any work is done stays one line."""
    if console is None:
        yield [None] * len(phases)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    progress = Progress(*columns, console=console, transient=True)
    tasks = [progress.add_task(label, total=total, visible=False) for label, total in phases]
    shown: set[Any] = set()

    def callback(task: Any) -> Any:
        def advance(done: int, of: int | None = None) -> None:
            if not shown:
                progress.start()
            if task not in shown:
                shown.add(task)
                progress.reset(task, visible=True)  # its clock starts now
            if of is None:
                progress.advance(task, done)
            else:
                progress.update(task, completed=done, total=of)

        return advance

    try:
        yield [callback(task) for task in tasks]
    finally:
        if shown:
            progress.stop()


@app.command()
def attack(
    model: ModelArg,
    dataset: DatasetOpt,
    data_dir: DataDirOpt = None,
    split: SplitOpt = "test",
    limit: Annotated[
        int | None, typer.Option(help="Attack the first N samples (default 200).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Gradient steps per attack.")] = 20,
    restarts: Annotated[
        int, typer.Option(help="Random restarts per attack (the first starts at x).")
    ] = 3,
    no_distance: Annotated[
        bool,
        typer.Option(
            "--no-distance", help="Skip the search for the smallest adversarial distance."
        ),
    ] = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    certificate: CertificateOpt = None,
    margins: MarginsOpt = "float32",
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="One row per sample: radius, adversarial distance, ratio, violation."
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    input_shape: InputShapeOpt = None,
    arch: ArchOpt = None,
    trust_model: TrustOpt = False,
    device: DeviceOpt = None,
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    show_traceback: TracebackOpt = False,
) -> None:
    """Attack the certificates: an L2 attack inside each certified radius must fail.

    Exit 1 when any decision changes inside a certified radius (an unsound certificate),
    0 otherwise. Also reports the smallest adversarial distance found against the radius.
    """
    from lipcert import api
    from lipcert.certify.command import CertifyRequest, resolve_attack
    from lipcert.config import resolve_config
    from lipcert.reports import attack_report

    with reported_errors(show_traceback):
        from lipcert.errors import UsageError

        if steps < 1 or restarts < 1:
            raise UsageError(
                f"expected --steps >= 1 and --restarts >= 1 but got {steps}, {restarts}"
            )
        request = CertifyRequest(
            model=model,
            dataset=dataset,
            data_dir=data_dir,
            split=split,
            limit=DEFAULT_ATTACK_LIMIT if limit is None else limit,
            mean=mean,
            std=std,
            certificate=certificate,
            margins=margins,
            csv_path=csv_path,
            input_shape=input_shape,
            arch=arch,
            trust_model=trust_model,
            device=device,
            resize=resize,
            crop=crop,
        )
        batch_size, chosen_certificate = resolve_attack(request, resolve_config())
        data = _load_dataset(request)
        bounded = _load_for(request, data)
        progress = None if quiet else stderr
        phases = [("certifying", len(data)), ("attacking", len(data))]
        with _progress(progress, phases, eta=True) as (on_batch, on_progress):
            report = api.attack_certificates(
                bounded,
                data,
                steps=steps,
                restarts=restarts,
                search_distance=not no_distance,
                precision=request.margins or "float32",  # type: ignore[arg-type]  # checked
                certificate=chosen_certificate,  # type: ignore[arg-type]  # checked
                batch_size=batch_size,
                **_preprocessing(request.mean, request.std, data),
                device=request.device,
                on_batch=on_batch,
                on_progress=on_progress,
            )
        if csv_path is not None:
            report.to_csv(csv_path)
        if not quiet:
            from rich.markup import escape

            # The report on stdout as certify's, on stderr when stdout holds the JSON.
            console = stderr if as_json else stdout_console()
            attack_report.render(console, str(model), report.result, report.labels)
            for note in report.certified.notes:  # as certify shows them (files skipped, sizes)
                console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        if as_json:
            _emit_json(attack_report.to_json(str(model), report.result, report.labels))
        if report.violations:
            from lipcert.errors import UnsoundCertificateError

            raise UnsoundCertificateError(
                f"{report.violations} certificate(s) broken by the attack"
            )
    raise typer.Exit(int(ExitCode.PASSED))


@app.command()
def datasets(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Also search this folder (first).")
    ] = None,
    show_traceback: TracebackOpt = False,
) -> None:
    """List the named datasets lipcert can find, where, and every place it looked."""
    from rich.markup import escape
    from rich.table import Table

    from lipcert import api

    with reported_errors(show_traceback):
        console = stdout_console()
        locations = api.dataset_locations(data_dir)
        table = Table(title="datasets")
        for column in ("name", "split", "format"):
            table.add_column(column, no_wrap=True)
        table.add_column("path", overflow="fold")
        for location in locations:
            table.add_row(
                location.name,
                location.split,
                location.format or "-",
                escape(str(location.path)) if location.path is not None else "not found",
            )
        console.print(table)
        places: dict[str, None] = {}
        for location in locations:
            places.update((str(place), None) for place in location.searched)
        console.print("searched, in order (--data-dir, $LIPCERT_DATA, then download caches):")
        for place in places:
            console.print(f"  {escape(place)}", highlight=False, soft_wrap=True)


@app.command()
def compare(
    models: Annotated[
        list[Path],
        typer.Argument(help="Models to compare (.onnx files or checkpoints).", show_default=False),
    ],
    dataset: DatasetOpt,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    eps: Annotated[
        str | None,
        typer.Option(help="Radii for certified accuracy (default 36/255,72/255,108/255,1)."),
    ] = None,
    robustness: Annotated[
        str,
        typer.Option(
            help="The robustness axis of the Pareto front: mcr, or an eps (e.g. 36/255) for "
            "the certified accuracy at that radius."
        ),
    ] = "mcr",
    mean: MeanOpt = None,
    std: StdOpt = None,
    certificate: CertificateOpt = None,
    margins: Annotated[
        str, typer.Option(help="float32 (onnxruntime, default) or float64 (the graph).")
    ] = "float32",
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the table (one row per model) here.")
    ] = None,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Draw the Pareto front into this .png or .svg file (and the certified-"
            "accuracy curves into FILE-curves.png/.svg).",
        ),
    ] = None,
    quiet: QuietOpt = False,
    arch: ArchOpt = None,
    trust_model: TrustOpt = False,
    show_traceback: TracebackOpt = False,
) -> None:
    """Compare models on one dataset: a table and the accuracy-robustness Pareto front.

    A model is on the front when no other is at least as accurate and as robust (the MCR, or
    certified accuracy at --robustness EPS), and better on one. Exit 0, or 2 on usage, model
    or data errors.
    """
    from lipcert import api
    from lipcert.certify.command import parse_eps_list
    from lipcert.compare import compare_models

    with reported_errors(show_traceback):
        eps_list = parse_eps_list(eps or "36/255,72/255,108/255,1")
        measure: Any = "mcr" if robustness == "mcr" else parse_eps_list(robustness)[0]
        inputs: list[tuple[str, str | Path | None]] = [("the dataset", dataset)]
        inputs += [("a model", m) for m in models]
        if csv_path is not None:
            from lipcert.reports.files import check_output_path

            check_output_path(csv_path, option="--csv", inputs=inputs)
        if plot is not None:
            _check_plot(plot, inputs)
            _check_plot(_curves_path(plot), inputs)
        data = api.load_dataset(dataset, split=split, data_dir=data_dir, limit=limit)
        normalisation = _preprocessing(mean, std, data)
        stems = [m.stem for m in models]
        comparison = compare_models(
            [str(m) for m in models],
            data,
            eps_list,
            robustness=measure,
            names=stems if len(set(stems)) == len(stems) else [str(m) for m in models],
            precision=margins,  # type: ignore[arg-type]  # checked by the API
            certificate=certificate or "auto",  # type: ignore[arg-type]
            input_shape=tuple(int(d) for d in data.images.shape[1:]),
            arch=arch,
            trust=trust_model,
            **normalisation,
        )
        if csv_path is not None:
            comparison.to_csv(csv_path)
        if plot is not None:
            from lipcert.plots import plot_certified_accuracy, plot_pareto

            plot_pareto(comparison, plot)
            eps_values = [e.value for e in comparison.eps]
            plot_certified_accuracy(comparison, _curves_path(plot), eps=eps_values)
        if not quiet:
            # one row per model: wide rather than wrapped, also when piped (80 columns)
            width = max(Console(stderr=as_json).width, 132)
            console = Console(stderr=as_json, highlight=False, width=width)
            _render_comparison(console, comparison, f"{data.name} ({len(data)} samples)")
        if as_json:
            _emit_json(comparison.to_dict())
    raise typer.Exit(int(ExitCode.PASSED))


def _render_comparison(console: Console, comparison: Any, data: str) -> None:
    from rich.table import Table

    from lipcert.reports.format import bound_text, lower_text

    table = Table(title=f"{len(comparison.names)} models on {data}")
    table.add_column("model", no_wrap=True)
    for column in ("accuracy", "MCR", *(f"cert@{e.label}" for e in comparison.eps)):
        table.add_column(column, justify="right")
    table.add_column("L", justify="right")
    table.add_column("time s", justify="right")
    table.add_column("front", justify="center")
    for row, report in zip(comparison.rows(), comparison.reports, strict=True):
        table.add_row(
            row["model"],
            # measures rounded down, the bound up: no cell claims more than was computed
            lower_text(row["accuracy"], 3),
            lower_text(row["mcr"], 3),
            *(lower_text(value, 3) for _, value in report.summary.certified_accuracy),
            bound_text(row["lipschitz_bound"]),
            f"{row['load_seconds'] + row['certify_seconds']:.1f}",
            "*" if row["pareto"] else "",
        )
    console.print(table)
    measure = "MCR" if comparison.robustness == "mcr" else comparison.robustness
    console.print(
        f"Pareto front (clean accuracy against {measure}): {', '.join(comparison.front)}",
        highlight=False,
    )


def _check_plot(path: Path, inputs: list[tuple[str, str | Path | None]]) -> None:
    """A plot file: .png or .svg, writable, not one of the inputs (before any work)."""
    from lipcert.plots import check_plot_path
    from lipcert.reports.files import check_output_path

    check_plot_path(path)
    check_output_path(path, option="--plot", inputs=inputs)


def _curves_path(plot: Path) -> Path:
    """Where compare --plot FILE draws the certified-accuracy curves: FILE-curves.<suffix>."""
    return plot.with_name(f"{plot.stem}-curves{plot.suffix}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lipcert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Robustness certificates for 1-Lipschitz neural networks."""


def main() -> None:
    app()
