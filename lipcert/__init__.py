"""lipcert: robustness certificates for 1-Lipschitz neural networks.

A model file goes through a front-end into one graph, the graph through a table of sound
bound rules into a certificate spec, and the spec with the model's logits into certified
radii. Every number that enters a certificate is a guaranteed bound.

The Python API (see docs/api.md):

    model = lipcert.load("model.onnx")                # or lipcert.from_torch(module, (1, 28, 28))
    model.lipschitz_bound, model.layers_frame()
    model.certify(x, y)                               # predictions, margins, radii, status
    lipcert.certify_dataset(model, (x, y), eps=[36 / 255])
    lipcert.attack_certificates(model, (x, y))        # an L2 attack inside every radius
    lipcert.compare_models([model_a, model_b], (x, y))

Names are imported on first use, so that `import lipcert` (and the command line) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "lipcert.api.model",
    "from_torch": "lipcert.api.model",
    "Model": "lipcert.api.model",
    "CertifiedBatch": "lipcert.api.model",
    "certify_dataset": "lipcert.api.data",
    "load_dataset": "lipcert.api.data",
    "DatasetReport": "lipcert.api.data",
    "attack_certificates": "lipcert.api.attack",
    "AttackReport": "lipcert.api.attack",
    "CertifiedAccuracy": "lipcert.api.metric",
    "RobustnessMetric": "lipcert.api.metric",
    "compare_models": "lipcert.compare",
    "Comparison": "lipcert.compare",
    "pareto_front": "lipcert.compare",
}

__all__ = [
    "AttackReport",
    "CertifiedAccuracy",
    "CertifiedBatch",
    "Comparison",
    "DatasetReport",
    "Model",
    "RobustnessMetric",
    "__version__",
    "attack_certificates",
    "certify_dataset",
    "compare_models",
    "from_torch",
    "load",
    "load_dataset",
    "pareto_front",
]

if TYPE_CHECKING:
    from lipcert.api.attack import AttackReport, attack_certificates
    from lipcert.api.data import DatasetReport, certify_dataset, load_dataset
    from lipcert.api.metric import CertifiedAccuracy, RobustnessMetric
    from lipcert.api.model import CertifiedBatch, Model, from_torch, load
    from lipcert.compare import Comparison, compare_models, pareto_front


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipcert' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
