"""A trivial Beam pipeline for the Flink smoke test; runs in its own process so that the test can
check that nothing (job server, SDK workers) outlives it."""
import argparse
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    args, beam_args = parser.parse_known_args(argv)
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        (p | beam.Create(["compressor current", "suction pressure", "compressor vibration"])
           | beam.FlatMap(str.split)
           | beam.combiners.Count.PerElement()
           | beam.MapTuple(lambda word, n: f"{word}={n}")
           | beam.io.WriteToText(args.output, shard_name_template=""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
