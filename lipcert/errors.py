"""The errors lipcert raises, and the exit codes the command line maps them to."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of every lipcert command."""

    PASSED = 0
    CHECK_FAILED = 1  # a gate, a bound check or an attack found a failure
    USAGE_OR_INPUT = 2  # bad usage, or a model or data file that cannot be used
    INTERNAL_ERROR = 3  # a bug in lipcert: an exception it did not expect


class LipcertError(Exception):
    """Base class of every error lipcert reports to the user."""

    exit_code: ExitCode = ExitCode.USAGE_OR_INPUT


class UsageError(LipcertError):
    """An option or argument has a value lipcert cannot use."""


class ModelLoadError(LipcertError):
    """A model file cannot be read, is malformed, or is refused for safety."""


class UnsafeModelError(ModelLoadError):
    """A model format that can run code was given without --trust-model."""


class UnsupportedOpError(LipcertError):
    """The graph holds an operation with no sound Lipschitz rule."""


class ShapeError(UsageError):
    """An input shape does not fit what the model declares."""


class DatasetError(LipcertError):
    """A dataset cannot be found, is malformed, or does not fit the model."""


class GateError(LipcertError):
    """A CI gate failed: a measured value is below its threshold."""

    exit_code = ExitCode.CHECK_FAILED


class UnsoundCertificateError(LipcertError):
    """An attack changed a decision inside a certified radius."""

    exit_code = ExitCode.CHECK_FAILED
