"""What every benchmark states about the machine it ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "ram_gib": round(ram, 1), "cpu_model": cpu, "python": platform.python_version()}


def describe(m: dict) -> str:
    return f"{m['cpus']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python {m['python']}"
