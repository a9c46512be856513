"""The L1 margin from the MLP's local behaviour: a bound on g over the delta-sphere, from a cell tree.

With g(h) = h + W2 relu(W1 h + b1) + b2 and kappa < 1, g is a homeomorphism of R^d. If a member's
attention output leaves the max-norm ball B = {h : ||h - P|| <= delta} around P = x_0 + c, the
straight segment from g(P) (inside g(B)) to g(h) (outside) crosses g(B)'s boundary g(S), S the
sphere ||h - P|| = delta; so ||g(h) - g(P)|| >= rho = min over S of ||g(s) - g(P)||, which is at
least (1 - kappa) delta and on the paper's instances much more (the same holds for ||h - P|| >= delta).

S is 2d faces (coordinate j fixed at +delta or -delta, the others in [-delta, delta]). A
certificate carries, per face, a cell tree (cells.py) that never splits the face's own
coordinate. The tree covers its face by construction; on
each leaf cell this module bounds ||g(P + e) - g(P)|| from below in exact arithmetic: neurons
whose pre-activation keeps its sign on the cell contribute exactly (the map is affine there),
the others an interval; the cell's bound is the largest distance of any output coordinate's
range from 0. rho is the minimum over all leaves. Standard library only.
"""

from __future__ import annotations

import math
from fractions import Fraction

from .cells import MAX_DEPTH, ONE, Box, leaves
from .instance import Layer
from .exact import get
from .reading import MalformedCertificate

MAX_LEAVES = 200_000    # leaves in one certificate's trees, all members together


def _lcm_den(xs) -> int:
    out = 1
    for x in xs:
        out = math.lcm(out, x.denominator)
    return out


def _face_cells(tree: object, face: int, d: int, where: str) -> list[Box]:
    """The cells of a face's tree, as integer offsets N (e = delta N / 2^MAX_DEPTH)."""
    j = face // 2
    lo, hi = [-ONE] * d, [ONE] * d
    lo[j] = hi[j] = ONE if face % 2 == 0 else -ONE
    return leaves(tree, lo, hi, {j}, where)


class _Cell:
    """Exact lower bound of ||g(P + e) - g(P)||_inf over boxes of offsets e, for one member.

    Every quantity is an integer over one common denominator, which is exact because the
    weights are rationals and a cell's corners are P + delta N / 2^MAX_DEPTH with N integer:
    offsets e are counted in units of 1/E (E = den(delta) 2^MAX_DEPTH), pre-activations in
    units of 1/U1, outputs in units of 1/U; Fraction appears only once per member, at the end.
    """

    def __init__(self, layer: Layer, P: list[Fraction], delta: Fraction):
        self.d = len(P)
        D1, D2 = _lcm_den(x for row in layer.W1 for x in row), _lcm_den(x for row in layer.W2 for x in row)
        self.W1 = [[int(x * D1) for x in row] for row in layer.W1]    # (m, d), units 1/D1
        self.W2 = [[int(x * D2) for x in row] for row in layer.W2]    # (d, m), units 1/D2
        pre0 = [sum((a * b for a, b in zip(row, P)), Fraction(0)) + b for row, b in zip(layer.W1, layer.b1)]
        E = delta.denominator << MAX_DEPTH
        U1 = math.lcm(_lcm_den(pre0), E * D1)
        self.U = U1 * D2
        self.scale_e = delta.numerator                                # N -> e in units 1/E
        self.s1 = U1 // (E * D1)                                      # W1 e: units 1/(E D1) -> 1/U1
        self.se = self.U // E                                         # e: units 1/E -> 1/U
        self.pre0 = [int(x * U1) for x in pre0]                       # (m,), units 1/U1
        self.affine: dict[tuple[int, ...], list[list[int]]] = {}      # active set -> A, units 1/U per e unit

    def _A(self, active: tuple[int, ...]) -> list[list[int]]:
        """A = I + W2[:, active] W1[active], scaled: the exact linear part where `active` is on, the rest off."""
        if active not in self.affine:
            d, W1, W2 = self.d, self.W1, self.W2
            self.affine[active] = [[self.se * (k == j) + self.s1 * sum(W2[k][n] * W1[n][j] for n in active)
                                    for j in range(d)] for k in range(d)]
        return self.affine[active]

    def bound(self, N_lo: list[int], N_hi: list[int]) -> int:
        """The cell's bound in units of 1/U."""
        lo = [self.scale_e * x for x in N_lo]
        hi = [self.scale_e * x for x in N_hi]
        active, consts, unstable = [], [], []
        for n, row in enumerate(self.W1):
            p0 = self.pre0[n]
            p_lo = p0 + self.s1 * sum(w * (lo[j] if w > 0 else hi[j]) for j, w in enumerate(row) if w)
            p_hi = p0 + self.s1 * sum(w * (hi[j] if w > 0 else lo[j]) for j, w in enumerate(row) if w)
            r0 = max(p0, 0)
            if p_lo >= 0:    # relu(pre) - relu(pre0) = W1_n e + pre0_n - r0_n
                active.append(n)
                consts.append((n, p0 - r0))
            elif p_hi <= 0:  # relu(pre) - relu(pre0) = -r0_n
                consts.append((n, -r0))
            else:            # in [-r0_n, p_hi - r0_n]
                unstable.append((n, -r0, p_hi - r0))
        A = self._A(tuple(active))
        best = 0
        for k in range(self.d):
            w2 = self.W2[k]
            out_lo = out_hi = sum(w2[n] * c for n, c in consts)
            for n, t_lo, t_hi in unstable:
                a, b = w2[n] * t_lo, w2[n] * t_hi
                out_lo, out_hi = out_lo + min(a, b), out_hi + max(a, b)
            for a, x_lo, x_hi in zip(A[k], lo, hi):
                if a > 0:
                    out_lo, out_hi = out_lo + a * x_lo, out_hi + a * x_hi
                elif a < 0:
                    out_lo, out_hi = out_lo + a * x_hi, out_hi + a * x_lo
            best = max(best, out_lo, -out_hi)
        return best


def sphere_floor(layer: Layer, P: list[Fraction], delta: Fraction, trees: object, where: str,
                 leaves_left: list[int]) -> Fraction:
    """rho: a proven lower bound of ||g(s) - g(P)||_inf over the sphere ||s - P||_inf = delta.

    trees: one preorder tree per face, faces in the order (0, +), (0, -), (1, +), ...
    leaves_left: a one-element budget shared by all members (MAX_LEAVES), decremented here.
    """
    d = len(P)
    if not isinstance(trees, list) or len(trees) != 2 * d:
        raise MalformedCertificate(f"{where}: expected {2 * d} trees, one per face of the sphere")
    cell = _Cell(layer, P, delta)
    rho = None
    for face, tree in enumerate(trees):
        boxes = _face_cells(tree, face, d, f"{where}[{face}]")
        leaves_left[0] -= len(boxes)
        if leaves_left[0] < 0:
            raise MalformedCertificate(f"{where}: more than {MAX_LEAVES} cells in all")
        for lo, hi in boxes:
            b = cell.bound(lo, hi)
            rho = b if rho is None else min(rho, b)
    return Fraction(rho, cell.U)


def output_margin(layer: Layer, kappa: Fraction, delta: Fraction, centres: list[list[Fraction]],
                  residuals: list[Fraction], sphere: object) -> tuple[Fraction, str]:
    """The layer-output margin when some member's attention output is at least delta from its
    c_i (max norm): min_i floor_i - ||r_i||, floor_i = (1 - kappa) delta or, with the certificate's
    `sphere` record ({"trees": one list of face trees per member}), the larger proven rho_i."""
    floors = [(1 - kappa) * delta] * len(centres)
    if sphere is None:
        return min(f - r for f, r in zip(floors, residuals)), "(1 - kappa) delta"
    trees = get(sphere, "trees", "sphere")
    if not isinstance(trees, list) or len(trees) != len(centres):
        raise MalformedCertificate("sphere.trees: expected one list of face trees per member")
    budget = [MAX_LEAVES]
    floors = [max(f, sphere_floor(layer, P, delta, t, f"sphere.trees[{i}]", budget))
              for i, (f, P, t) in enumerate(zip(floors, centres, trees))]
    return min(f - r for f, r in zip(floors, residuals)), "the sphere's cell trees"
