"""Reusable Beam PTransforms (and the TFDV validation); the pure logic they build on is in core/."""
