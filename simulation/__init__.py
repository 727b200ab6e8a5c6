"""The fleet simulator behind `python -m pipelines.simulate` (DESIGN section 6)."""
