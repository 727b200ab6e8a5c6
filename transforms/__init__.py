"""Reusable Beam PTransforms and the lake I/O they build on."""
