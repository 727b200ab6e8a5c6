"""The fleet simulator behind `python -m pipelines.simulate` (DESIGN section 6)."""
import datetime as _dt

# where a simulated history ends unless told otherwise: fixed, not the wall clock, because the readings
# depend on their time and the same seed must give the same data on any day
DEFAULT_END = _dt.datetime(2026, 11, 30, tzinfo=_dt.timezone.utc)
