"""Certificates from logits and a certificate spec: radii, metrics, gates."""
