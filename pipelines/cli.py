"""Command-line plumbing shared by the entry points."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import warnings


def setup_logging(level: str = "INFO") -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("apache_beam.runners.worker", "kafka", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def utc_datetime(text: str) -> dt.datetime:
    """argparse type: ISO date or datetime, naive values are UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks."""
