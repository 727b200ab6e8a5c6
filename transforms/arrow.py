"""Arrow helpers shared by the transforms, and the one place where element sizes are bounded.

Every element that crosses a shuffle (GroupByKey, CoGroupByKey, Reshuffle, a combiner's
accumulator, a side input) must stay below a fixed size whatever the input size: Flink sorts
grouped records in buffers of a few MB (here 6.6 MB; a larger record fails the job) and Dataflow
suffers with huge elements too. So:

* :func:`chunks` splits an Arrow table into tables of at most ``rows`` rows AND ``nbytes`` bytes
  (:class:`ChunkBound`), each *compact*: with pyarrow 10, pickling a zero-copy slice serializes the
  parent's whole buffers, so a slice of a 100 MB table would still cross the wire as 100 MB.
* :class:`ReadParquetChunks` reads Parquet files as such bounded tables (per row group, in batches),
  instead of one table per row group, whose size is the writer's choice (up to 1M rows here).
* :class:`Gather` brings all elements of a PCollection into one list (a commit needs every written
  file) with each element crossing the shuffle alone; ``combiners.ToList`` ships a whole bundle's
  list as one lifted accumulator.
* :class:`SideTable` hands a side input over as bounded chunks (``AsList``) and concatenates them
  once per DoFn instance, instead of one singleton table built by a ToList of large data.

The Beam distribution ``elements/<site>_bytes`` records chunk sizes (its max is the largest element
a site produced), cheap because ``nbytes`` reads buffer sizes only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 100_000
DEFAULT_CHUNK_BYTES = 2 << 20           # ~2 MB: a third of Flink's sort-buffer record limit here


@dataclass(frozen=True)
class ChunkBound:
    """Most rows and bytes (Arrow ``nbytes``) of one table element."""
    rows: int = DEFAULT_CHUNK_ROWS
    nbytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self):
        if self.rows < 1 or self.nbytes < 1:
            raise ValueError(f"chunk bound must be positive: {self}")


DEFAULT_BOUND = ChunkBound()


def wire_bytes(table: pa.Table) -> int:
    """Bytes of the buffers a table references: what pickling it serializes (pyarrow 10)."""
    return table.get_total_buffer_size()


def compact(table: pa.Table) -> pa.Table:
    """The table with its own buffers, one chunk per column (copies only when it shares buffers)."""
    if wire_bytes(table) <= table.nbytes + 64 * table.num_columns + 4096:
        return table
    columns = [pa.concat_arrays(c.chunks) if c.num_chunks else pa.array([], c.type) for c in table.columns]
    return pa.Table.from_arrays(columns, schema=table.schema)


def chunks(table: pa.Table, bound: ChunkBound = DEFAULT_BOUND) -> Iterator[pa.Table]:
    """Compact tables of at most ``bound.rows`` rows and (unless one row alone is larger)
    ``bound.nbytes`` bytes, in row order; nothing for an empty table."""
    n = table.num_rows
    if n == 0:
        return
    size = table.nbytes
    if n <= bound.rows and size <= bound.nbytes:
        yield compact(table)
        return
    per_row = max(size / n, 1e-9)
    step = max(1, min(bound.rows, int(bound.nbytes / per_row)))
    for lo in range(0, n, step):
        part = table.slice(lo, step)
        if part.nbytes > bound.nbytes and part.num_rows > 1:       # wide rows here: halve until it fits
            half = part.num_rows // 2
            yield from chunks(part.slice(0, half), bound)
            yield from chunks(part.slice(half), bound)
        else:
            yield compact(part)


def keyed_chunks(key, table: pa.Table, bound: ChunkBound = DEFAULT_BOUND) -> Iterator[tuple]:
    for part in chunks(table, bound):
        yield key, part


class ElementSizes:
    """Records the sizes of the table elements one site emits (a Beam distribution; max = largest)."""

    def __init__(self, site: str):
        self._site = site
        self._bytes = Metrics.distribution("elements", f"{site}_bytes")
        self._largest = 0

    def observe(self, table: pa.Table) -> pa.Table:
        size = table.nbytes
        self._bytes.update(size)
        if size > self._largest:
            self._largest = size
            log.debug("%s: largest element so far %d bytes (%d rows)", self._site, size, table.num_rows)
        return table


class _Chunk(beam.DoFn):
    def __init__(self, site: str, bound: ChunkBound, keyed: bool):
        self._site, self._bound, self._keyed = site, bound, keyed

    def setup(self):
        self._sizes = ElementSizes(self._site)

    def process(self, element):
        key, table = element if self._keyed else (None, element)
        for part in chunks(table, self._bound):
            self._sizes.observe(part)
            yield (key, part) if self._keyed else part


class ChunkTables(beam.PTransform):
    """PCollection of Arrow tables (or (key, table) with ``keyed``) -> the same rows in bounded chunks."""

    def __init__(self, site: str, bound: ChunkBound = DEFAULT_BOUND, keyed: bool = False):
        super().__init__()
        self._site, self._bound, self._keyed = site, bound, keyed
        self._element = Tuple[Any, pa.Table] if keyed else pa.Table
        self.with_input_types(self._element).with_output_types(self._element)

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_Chunk(self._site, self._bound, self._keyed)).with_input_types(
            self._element).with_output_types(self._element)


class Gather(beam.PTransform):
    """All elements as ONE list (unordered; [] for an empty input), each element crossing the
    shuffle alone under one key: the values iterable is streamed to the consumer."""

    def expand(self, pcoll):
        seed = pcoll.pipeline | "Seed" >> beam.Create([(0, (False, None))])
        items = pcoll | "Key" >> beam.Map(lambda x: (0, (True, x)))
        return ((seed, items) | "Both" >> beam.Flatten()
                | "Group" >> beam.GroupByKey()
                | "List" >> beam.MapTuple(lambda _, values: [x for real, x in values if real]))


class SideTable:
    """A side input of Arrow tables passed as bounded chunks (``beam.pvalue.AsList``) and built once
    per DoFn instance by ``build(list of tables)``. Bounded pipelines only: in the global window the
    side input is fixed for the run, so the cached value is valid for every element."""

    def __init__(self, build: Callable[[list[pa.Table]], object]):
        self._build = build
        self._value = None
        self._built = False

    def get(self, tables) -> object:
        if not self._built:
            self._value, self._built = self._build(list(tables)), True
        return self._value

    def __getstate__(self):           # never pickle a built value into a DoFn
        return {"_build": self._build, "_value": None, "_built": False}


# --- bounded Parquet reading ------------------------------------------------------------------

@beam.typehints.with_input_types(str)
@beam.typehints.with_output_types(Tuple[str, int])
class _RowGroups(beam.DoFn):
    def process(self, uri: str):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(uri, compression_type="uncompressed") as fh:
            groups = pq.ParquetFile(fh).metadata.num_row_groups
        for i in range(groups):
            yield uri, i


class _ReadRowGroup(beam.DoFn):
    def __init__(self, columns, bound: ChunkBound, with_filename: bool, site: str):
        self._columns, self._bound, self._with_filename, self._site = columns, bound, with_filename, site

    def setup(self):
        self._sizes = ElementSizes(self._site)

    def process(self, element):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems
        uri, group = element
        with FileSystems.open(uri, compression_type="uncompressed") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=self._bound.rows, row_groups=[group],
                                                         columns=self._columns):
                for part in chunks(pa.Table.from_batches([batch]), self._bound):
                    self._sizes.observe(part)
                    yield (uri, part) if self._with_filename else part


class ReadParquetChunks(beam.PTransform):
    """PCollection of Parquet file URIs -> Arrow tables (or (uri, table) with ``with_filename``)
    within ``bound``; row groups are spread over workers, like Beam's ReadAllFromParquetBatched."""

    def __init__(self, columns: list[str] | None = None, with_filename: bool = False,
                 bound: ChunkBound = DEFAULT_BOUND, site: str = "parquet_read"):
        super().__init__()
        self._columns, self._with_filename, self._bound, self._site = columns, with_filename, bound, site
        self._output = Tuple[str, pa.Table] if with_filename else pa.Table
        self.with_input_types(str).with_output_types(self._output)

    def expand(self, uris):
        return (uris
                | "RowGroups" >> beam.ParDo(_RowGroups())
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadRowGroup(self._columns, self._bound, self._with_filename, self._site))
                .with_input_types(Tuple[str, int]).with_output_types(self._output))
