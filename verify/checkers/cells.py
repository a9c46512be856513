"""Cell trees of certificates: a box bisected at midpoints, written as a flat preorder list.

-1 is a leaf; k >= 0 splits the current cell's coordinate k at its midpoint and is followed by
the left subtree, then the right one. A tree covers its root box by construction, so a checker
only needs its leaves. Coordinates are integers (a cell of width 2^(MAX_DEPTH + 1) at the root
halves exactly MAX_DEPTH times); the caller maps them to its own rationals. Standard library only.
"""

from __future__ import annotations

from .reading import MalformedCertificate

LEAF = -1
MAX_DEPTH = 64          # splits along one root-to-leaf path
ONE = 1 << MAX_DEPTH    # the root box is [-ONE, ONE] per free coordinate

Box = tuple[list[int], list[int]]


def leaves(tree: object, lo: list[int], hi: list[int], frozen: set[int], where: str) -> list[Box]:
    """The leaf cells of `tree` over the box [lo, hi]; coordinates in `frozen` are never split."""
    if not isinstance(tree, list) or not tree:
        raise MalformedCertificate(f"{where}: expected a non-empty list of integers")
    d = len(lo)
    stack, out, pos = [(lo, hi, 0)], [], 0
    while stack:
        lo, hi, depth = stack.pop()
        if pos >= len(tree):
            raise MalformedCertificate(f"{where}: the tree ends before every cell is closed")
        k = tree[pos]
        pos += 1
        if not isinstance(k, int) or isinstance(k, bool):
            raise MalformedCertificate(f"{where}[{pos - 1}]: expected an integer")
        if k == LEAF:
            out.append((lo, hi))
            continue
        if not 0 <= k < d or k in frozen:
            raise MalformedCertificate(f"{where}[{pos - 1}]: {k} is not a coordinate this tree can split")
        if depth >= MAX_DEPTH:
            raise MalformedCertificate(f"{where}: deeper than {MAX_DEPTH} splits")
        mid = (lo[k] + hi[k]) // 2  # exact at every depth up to MAX_DEPTH
        right_lo, left_hi = lo.copy(), hi.copy()
        right_lo[k] = left_hi[k] = mid
        stack.append((right_lo, hi, depth + 1))
        stack.append((lo, left_hi, depth + 1))
    if pos != len(tree):
        raise MalformedCertificate(f"{where}: {len(tree) - pos} entries after the last cell")
    return out
