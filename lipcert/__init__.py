"""lipcert: robustness certificates for 1-Lipschitz neural networks.

A model file goes through a front-end into one graph, the graph through a table of sound
bound rules into a certificate spec, and the spec with the model's logits into certified
radii. Every number that enters a certificate is a guaranteed bound.
"""

from __future__ import annotations

__version__ = "0.1.0"
