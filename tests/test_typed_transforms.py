"""The composite PTransforms declare their element types: applying one to a PCollection of the wrong
type fails when the pipeline is built (Beam's pipeline type check), not on a worker mid-run."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.typehints.decorators import TypeCheckError

from transforms.acute import AcuteRules
from transforms.arrow import ChunkTables, ChunkBound, ReadParquetChunks
from transforms.decode import DecodeMessages
from transforms.delta import WriteDelta
from transforms.landing import LandDecoded, SinkAlerts


def _ints(p):
    return p | "Ints" >> beam.Create([1, 2, 3])


@pytest.mark.parametrize("transform", [
    lambda: ChunkTables("test"),
    lambda: ChunkTables("test", keyed=True),
    lambda: ReadParquetChunks(),
    lambda: DecodeMessages(),
    lambda: AcuteRules("/nonexistent/lake", shards=2),
    lambda: WriteDelta("/nonexistent/lake", "features", app="test", commit_id="c", validate=False),
    lambda: LandDecoded("/nonexistent/lake", 60.0),
    lambda: SinkAlerts("/nonexistent/lake", 60.0),
], ids=["ChunkTables", "ChunkTables_keyed", "ReadParquetChunks", "DecodeMessages", "AcuteRules", "WriteDelta",
        "LandDecoded", "SinkAlerts"])
def test_a_pcollection_of_the_wrong_type_fails_at_construction(transform):
    p = beam.Pipeline()
    with pytest.raises(TypeCheckError):
        _ints(p) | "Apply" >> transform()


def test_the_declared_types_let_the_right_elements_through():
    table = pa.table({"x": list(range(10))})
    with beam.Pipeline() as p:
        tables = p | beam.Create([table])
        chunks = tables | "Chunk" >> ChunkTables("test", ChunkBound(rows=3))
        assert chunks.element_type is pa.Table
        assert_that(chunks | beam.Map(lambda t: t.num_rows), equal_to([3, 3, 3, 1]))
        keyed = (tables | beam.Map(lambda t: ("k", t)).with_output_types(beam.typehints.Tuple[str, pa.Table])
                 | "ChunkKeyed" >> ChunkTables("test", ChunkBound(rows=5), keyed=True))
        assert_that(keyed | beam.MapTuple(lambda k, t: (k, t.num_rows)), equal_to([("k", 5), ("k", 5)]),
                    label="keyed")
