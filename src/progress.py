"""Progress of long loops as log lines: one every `every` seconds and one at the end of a loop that
took that long, in the console and <app>.log alike, with or without a terminal (DVC, Slurm)."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
EVERY = 10.0  # seconds between lines


def ticking(items: Iterable[T], total: int, what: str, unit: str = "batches", every: float = EVERY) -> Iterator[T]:
    start = last = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every or (done == total and now - start >= every):
            log.info(f"{what}: {done}/{total} {unit} ({now - start:.0f} s)")
            last = now
