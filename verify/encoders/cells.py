"""Best-first bisection of boxes into cell trees (the checkers' format, verify/checkers/cells.py).

The cell with the lowest lower bound is split at the midpoint of its widest free coordinate
(relative to its root's width) until a leaf budget or a time budget is spent, or the lowest
bound is within a relative gap of the best value seen at a cell centre (no split can gain
more). Trees cut short are still covers; the floor they prove is the least leaf bound.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

LEAF = -1


@dataclass(frozen=True)
class Budget:
    """How hard the branch and bound tries (an option with defaults)."""
    leaves: int = 250        # leaves over all roots together
    seconds: float = 2.0     # wall-clock; the trees found so far are kept
    gap: float = 1e-3        # stop when the lowest bound is within this relative gap of a centre value


Bound = Callable[[np.ndarray, np.ndarray], float]


def bisect(roots: list[tuple[np.ndarray, np.ndarray, int | None]], bound: Bound, budget: Budget,
           centre_value: Bound | None = None) -> tuple[list[list[int]], float]:
    """Per root (lo, hi, frozen coordinate or None), a preorder cell tree; and the float floor
    (the least leaf bound; inf where every cell is empty)."""
    heap, children = [], {}
    upper = math.inf
    for ident, (lo, hi, frozen) in enumerate(roots):
        heap.append((bound(lo, hi), ident, lo, hi, frozen, hi - lo))
        if centre_value is not None:
            upper = min(upper, centre_value(lo, hi))
    heapq.heapify(heap)
    node, leaves, deadline = len(roots), len(roots), time.monotonic() + budget.seconds
    while heap and leaves < budget.leaves and time.monotonic() < deadline:
        low, ident, lo, hi, frozen, root_width = heap[0]
        if low == math.inf or low >= upper * (1 - budget.gap):
            break
        width = np.where(root_width > 0, (hi - lo) / np.where(root_width > 0, root_width, 1), -1.0)
        if frozen is not None:
            width[frozen] = -1.0
        k = int(np.argmax(width))
        if width[k] <= 0:
            break
        heapq.heappop(heap)
        mid = (lo[k] + hi[k]) / 2
        halves = []
        for a, b in ((lo[k], mid), (mid, hi[k])):
            l2, h2 = lo.copy(), hi.copy()
            l2[k], h2[k] = a, b
            heapq.heappush(heap, (bound(l2, h2), node, l2, h2, frozen, root_width))
            if centre_value is not None:
                upper = min(upper, centre_value(l2, h2))
            halves.append(node)
            node += 1
        children[ident] = (k, *halves)
        leaves += 1
    floor = heap[0][0] if heap else math.inf
    return [_preorder(root, children) for root in range(len(roots))], floor


def _preorder(root: int, children: dict[int, tuple[int, int, int]]) -> list[int]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        if n in children:
            k, left, right = children[n]
            out.append(k)
            stack += [right, left]
        else:
            out.append(LEAF)
    return out
