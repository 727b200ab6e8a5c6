"""Window sizes ("15m", "1h", "1d", "30s"): their parsing and labels (no Beam import)."""
from __future__ import annotations

import re
from dataclasses import dataclass

MODEL_WINDOW = "1h"                    # the feature window the models are trained on and score


@dataclass(frozen=True, order=True)
class WindowSize:
    seconds: int

    @property
    def us(self) -> int:
        return self.seconds * 1_000_000

    @property
    def label(self) -> str:
        for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.seconds % n == 0:
                return f"{self.seconds // n}{unit}"
        return f"{self.seconds}s"


def parse_window_sizes(text: str) -> tuple[WindowSize, ...]:
    """"15m,1h,1d" -> window sizes (s, m, h, d units)."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(\d+)([smhd])", part)
        if not m or int(m.group(1)) == 0:
            raise ValueError(f"window size {part!r}: expected a positive number and s, m, h or d, e.g. 15m")
        sizes.append(WindowSize(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]))
    if not sizes:
        raise ValueError("no window sizes given")
    return tuple(sorted(set(sizes)))


def parse_window_size(text: str) -> WindowSize:
    """"1h" -> one window size."""
    sizes = parse_window_sizes(text)
    if "," in text or len(sizes) != 1:
        raise ValueError(f"window size {text!r}: expected one size, e.g. {MODEL_WINDOW}")
    return sizes[0]
