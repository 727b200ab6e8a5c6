"""Entry points: `python -m pipelines.<name> --help`."""
