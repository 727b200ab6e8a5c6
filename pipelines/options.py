"""The options several entry points share, each declared by exactly one PipelineOptions class.

Beam builds one parser from the ``_add_argparse_args`` of every PipelineOptions subclass loaded in the
process (``PipelineOptions.get_all_options``, used when a pipeline is built and submitted), so an option
declared by two classes fails with a conflicting option string as soon as two entry points are
imported together. Each option therefore has one declaring class: here when several jobs have it, in
its job's module otherwise. A job's options class composes the shared classes it uses::

    class CleanseOptions(LakeOptions, ShardsOptions, PipelineOptions):
        option_defaults = {"shards": CleanseConfig.shards}      # job defaults of shared options

        @classmethod
        def _add_argparse_args(cls, parser):                    # the job's own options only
            ...

* ``PipelineOptions`` stays a direct base: get_all_options walks direct subclasses only
  (apache/beam#31139), and it must see the job's own options.
* Every job class defines its own ``_add_argparse_args``, even an empty one: an inherited one would
  declare the shared options a second time.
* ``options.view_as(CleanseOptions)`` parses the job's and the shared options (Beam walks the MRO);
  ``view_as(LakeOptions)`` reads one shared group.

Convention for every entry point: Beam's underscores (``--window_size``), and help text on every option.
"""
from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from core import lake
from core.windows import MODEL_WINDOW  # noqa: F401  (declared in core: the library's ExtractSpec defaults to it too)

DEFAULT_MODELS = "./data/models"
KAFKA_BOOTSTRAP = "127.0.0.1:9092"
READINGS_TOPIC = "sensor.readings"


def option_group(title: str | None, *options: tuple[str, dict]) -> classmethod:
    """The ``_add_argparse_args`` of a class of shared options: each ``(flag, add_argument keywords)``
    of ``options``, in the argument group ``title`` (None: at the parser's top level)."""
    def add_argparse_args(cls, parser):
        target = parser.add_argument_group(title) if title else parser
        for flag, kwargs in options:
            target.add_argument(flag, **kwargs)
    return classmethod(add_argparse_args)


class LakeOptions(PipelineOptions):
    _add_argparse_args = option_group(
        None, ("--lake", dict(default=lake.DEFAULT_LAKE, help="lake root (local path or s3://, gs://, abfss://)")))


class ModelsOptions(PipelineOptions):
    _add_argparse_args = option_group(
        None, ("--models", dict(default=DEFAULT_MODELS,
                                help="model registry root: versions live in <models>/<name>/<version>/")))


class WindowSizeOptions(PipelineOptions):
    _add_argparse_args = option_group(
        None, ("--window_size", dict(default=MODEL_WINDOW,
                                     help="feature window size the models are trained on, score and are evaluated at")))


class KafkaOptions(PipelineOptions):
    _add_argparse_args = option_group(
        "kafka",
        ("--bootstrap_servers", dict(default=KAFKA_BOOTSTRAP, help="Kafka bootstrap servers")),
        ("--topic", dict(default=READINGS_TOPIC, help="Kafka topic of the sensor readings")))


class ShardsOptions(PipelineOptions):
    """No default here: each job gives its own (``option_defaults``), from its config."""
    _add_argparse_args = option_group(
        None, ("--shards", dict(type=int, help="device shards the job's per-device work is split into (parallelism; "
                                               "memory per shard is about the rows read / shards)")))


class InputVersionOptions(PipelineOptions):
    _add_argparse_args = option_group(
        None, ("--upto_version", dict(type=int, default=None,
                                      help="newest version of the input table to consume (cleanse: landing, "
                                           "features: clean; None: the latest)")))


class ValidationOptions(PipelineOptions):
    _add_argparse_args = option_group(
        "validation",
        ("--tfdv_sample_rate", dict(type=float, default=None,
                                    help="share of rows TFDV statistics are computed on (None: all rows)")),
        ("--baseline_dir", dict(default=None,
                                help="TFDV statistics baselines for drift (<table>.pb); a missing baseline is "
                                     "created from the first run's output (None: <lake>/../baselines for a local "
                                     "lake)")),
        ("--summary_json", dict(default=None,
                                help="also write the run's summary to this JSON file (None: only printed)")))


class SpanOptions(PipelineOptions):
    """A span of a hot table, read at one version (Delta time travel): what a dataset is extracted from."""
    _add_argparse_args = option_group(
        "span",
        ("--start", dict(default=None,
                         help="inclusive start, ISO UTC: timestamp_ingested (raw) or window_start (features)")),
        ("--end", dict(default=None, help="exclusive end, ISO UTC (default: the start of today, UTC)")),
        ("--as_of_version", dict(type=int, default=None,
                                 help="hot-table Delta version to read (default: the latest when the run starts)")),
        ("--as_of_timestamp", dict(default=None,
                                   help="read the hot table as it was at this UTC time (Delta time travel)")))


class HotWindowOptions(PipelineOptions):
    _add_argparse_args = option_group(
        "hot window",
        ("--hot_days", dict(type=float, default=90.0,
                            help="hot window: landing ingest_date partitions older than this many days move to the "
                                 "archive")),
        ("--now", dict(default=None,
                       help="reference time of the hot window (and of retentions), ISO UTC (default: the current "
                            "time)")))


class IncrementalJobOptions(LakeOptions, InputVersionOptions, ShardsOptions, ValidationOptions, PipelineOptions):
    """What the incremental table-to-table jobs (cleanse, features) share."""

    @classmethod
    def _add_argparse_args(cls, parser):
        pass                           # its bases declare them


def declare(parser, *options_classes: type[PipelineOptions]) -> None:
    """Adds the options of each class, and of the shared classes it composes, to an argparse parser: the
    ``--help`` parser of a pipeline, or the whole parser of an entry point that runs no pipeline. A class's
    ``option_defaults`` (job defaults of shared options) are applied last."""
    for options_cls in options_classes:
        for cls in options_cls.__mro__:
            if cls is PipelineOptions:
                break
            if "_add_argparse_args" in vars(cls):
                cls._add_argparse_args(parser)
        parser.set_defaults(**getattr(options_cls, "option_defaults", {}))


class JoinVersions(argparse.Action):
    """Collects NAME=VERSION items into one comma-separated string (options travel to Beam as strings)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, ",".join(v for v in [getattr(namespace, self.dest) or "", *values] if v))


def parse_model_versions(pairs: list[str], prog: str = "score", names=None) -> dict[str, str] | None:
    """NAME=VERSION items (``--model_version``, or comma-separated in ``--model_versions``) -> {name: version};
    ``names``: the models allowed (default: the default models)."""
    from models import ensemble
    names = tuple(ensemble.MODELS if names is None else names)
    out: dict[str, str] = {}
    for item in (x.strip() for p in pairs for x in p.split(",")):
        if not item:
            continue
        name, sep, version = item.partition("=")
        if not sep or not name or not version:
            raise SystemExit(f"{prog}: model version {item!r}: expected NAME=VERSION, e.g. autoencoder=v0002")
        if name not in names:
            raise SystemExit(f"{prog}: unknown model {name!r} in {item!r} (models: {', '.join(names)})")
        if out.get(name, version) != version:
            raise SystemExit(f"{prog}: two versions given for {name}: {out[name]} and {version}")
        out[name] = version
    return out or None
