"""Sets of Kafka offsets as sorted disjoint intervals, per topic-partition.

The landing commits record which messages they contain; replayed messages (after a restart or a
failover) are recognised and dropped, so every message lands exactly once. The same sets give the
contiguous prefix that is safe to commit back to Kafka as the consumer group's position.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Iterable

import numpy as np


class OffsetSet:
    def __init__(self):
        self._ranges: dict[str, list[list[int]]] = defaultdict(list)   # "topic/partition" -> [[lo, hi], ...]

    @staticmethod
    def key(topic: str, partition: int) -> str:
        return f"{topic}/{partition}"

    def add(self, topic: str, partition: int, offsets: Iterable[int]) -> None:
        ranges = self._ranges[self.key(topic, partition)]
        for off in sorted(set(int(o) for o in offsets)):
            ranges.append([off, off])
        self._ranges[self.key(topic, partition)] = _normalise(ranges)

    def update(self, other: "OffsetSet") -> None:
        for k, ranges in other._ranges.items():
            self._ranges[k] = _normalise(self._ranges[k] + [list(r) for r in ranges])

    def contains(self, topic: str, partition: int, offsets: np.ndarray) -> np.ndarray:
        ranges = self._ranges.get(self.key(topic, partition))
        offsets = np.asarray(offsets, np.int64)
        if not ranges:
            return np.zeros(len(offsets), bool)
        lo = np.array([r[0] for r in ranges])
        hi = np.array([r[1] for r in ranges])
        k = np.searchsorted(lo, offsets, "right") - 1
        return (k >= 0) & (offsets <= hi[np.maximum(k, 0)])

    def prefix_end(self, topic: str, partition: int, start: int) -> int:
        """The first offset >= start that is not in the set (the next offset to consume)."""
        for lo, hi in self._ranges.get(self.key(topic, partition), []):
            if lo <= start <= hi:
                return hi + 1
        return start

    def partitions(self) -> list[tuple[str, int]]:
        return [(k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])) for k in sorted(self._ranges)]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for ranges in self._ranges.values() for lo, hi in ranges)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in sorted(self._ranges.items()) if v}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> "OffsetSet":
        out = cls()
        for k, ranges in (json.loads(text) if text else {}).items():
            out._ranges[k] = _normalise([list(r) for r in ranges])
        return out


def _normalise(ranges: list[list[int]]) -> list[list[int]]:
    ranges = sorted(ranges)
    out: list[list[int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out
