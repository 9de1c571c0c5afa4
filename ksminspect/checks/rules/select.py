"""The rows rules ask for: stable items, items outside the stable tree,
grouped by the mm whose rmap_list holds them, with their VMAs."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from ksminspect.checks.engine import Context
from ksminspect.decode import NONE, STABLE, UNSTABLE
from ksminspect.lookups import Vmas


def by_mm(ctx: Context, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """*rows* (walked, in walk order) grouped by the mm whose list holds them."""
    runs = ctx.c.runs
    # rows ascend, and each run is a stretch of rows
    starts = np.searchsorted(rows, [r.start for r in runs]).tolist()
    stops = np.searchsorted(rows, [r.stop for r in runs]).tolist()
    for run, start, stop in zip(runs, starts, stops):
        if start < stop:
            yield run.mm, rows[start:stop]


def vma_of(ctx: Context, mm: int, rows: np.ndarray) -> tuple[Optional[Vmas], np.ndarray]:
    """The mm's VMAs and the VMA index of each row's page (-1: none)."""
    vmas = ctx.look.vmas(mm)
    if vmas is None:
        return None, np.full(len(rows), -1)
    return vmas, vmas.at(ctx.c.page_address(rows))


def stable_rows(ctx: Context) -> np.ndarray:
    return np.nonzero(ctx.c.state[:ctx.c.walked] == STABLE)[0]


def left_rows(ctx: Context) -> np.ndarray:
    """Walked items outside the stable tree (unstable or in no tree)."""
    state = ctx.c.state[:ctx.c.walked]
    return np.nonzero((state == NONE) | (state == UNSTABLE))[0]
