"""Drift baselines of the lake's tables: where a table's baseline lives, and saving one from a
table's first committed rows. TFDV is imported only when a baseline is saved (its import takes
seconds)."""
from __future__ import annotations

import logging
from pathlib import Path

from core import lake
from transforms import delta

log = logging.getLogger(__name__)


def baseline_path(lake_root: str, baseline_dir: str | None, table: str) -> Path | None:
    if baseline_dir:
        return Path(baseline_dir) / f"{table}.pb"
    if lake.is_local(lake_root):
        return Path(lake_root.removeprefix("file://")).parent / "baselines" / f"{table}.pb"
    return None


def ensure_baseline(lake_root: str, table: str, version: int, path: Path | None, max_rows: int = 500_000) -> None:
    """Saves the statistics of (up to ``max_rows`` of) the rows committed in ``version`` as the
    table's drift baseline, unless one exists."""
    if path is None or path.exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transforms import validation
    parts, rows = [], 0
    for f in delta.added_files(lake_root, table, version - 1 if version else None, version):
        if rows >= max_rows:
            break
        data = delta.with_partition_columns(table, pq.read_table(f.uri.removeprefix("file://")), f.partition_values)
        parts.append(data)
        rows += data.num_rows
    if parts:
        validation.save_baseline(validation.statistics(table, [pa.concat_tables(parts)]), path)
        log.info("saved the drift baseline of %s (%d rows of version %d) to %s", table, rows, version, path)
