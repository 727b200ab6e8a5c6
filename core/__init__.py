"""Pure logic: plain Python, numpy, pyarrow, polars and delta-rs; no Beam and no TensorFlow import.

Lake I/O and bookkeeping (lake, registry, offsets, maintenance), timestamps, array helpers, the
acute rule engine (acute_rules, acute_state, acute_warm), training spans. The Beam transforms in
transforms/ and the entry points in pipelines/ build on these; these import only schemas/ and core/.
"""
