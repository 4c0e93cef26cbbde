"""A seeded generator of LRA Pathfinder / Path-X images in the official release layout.

Pathfinder (Linsley et al., NeurIPS 2018; Kim, Linsley et al., ICLR 2020) asks whether two marker
circles lie on the ends of one dashed curved contour. This module follows the construction of the
original generator (``drewlinsley/pathfinder``, ``snakes.py`` / ``snakes2.py``) with the per-size
settings that the LRA TFDS builder documents (``lra_benchmarks/data/pathfinder.py``); it is our
own numpy + Pillow implementation, with exact geometry where the original uses pixel masks.

Construction of one image (window ``W`` pixels; coordinates in window pixels):

1. Two *target* contours of ``contour_length`` dashes ("paddles") are grown side by side, the
   shorter one next. Their first dashes start ``seed_distance`` apart, the first at least
   ``2 * seed_distance`` from every border, in random directions.
2. A contour grows as in the original: after a dash ending at ``h`` in direction ``θ`` comes the
   pivot ``p = h + m·u(θ)``, then the next dash from ``p + m·u(θ')`` to ``p + (m + L)·u(θ')``
   (``L`` the dash length, ``m`` the margin: gaps are at most ``2m``). The candidate turns
   ``θ' - θ`` cover ``|turn| < π / (2·continuity)`` evenly and are weighted by
   cos²(continuity · turn); a candidate that leaves the window or comes too close to another shape
   is out (the original's availability weighting), and the rest are tried in random order by
   weight.
3. Clearance: a dash keeps an edge-to-edge distance of at least ``2m + 0.5`` px from every other
   dash and marker, except its predecessor in the same contour and its own contour's markers. So
   gaps *within* a contour (≤ 2m) are always narrower than gaps *between* contours, and no contour
   touches itself or another: the label follows from the geometry. Disks of the marker radius are
   reserved at all four target endpoints (marked or not, so free space says nothing of the label).
4. Fitting: the original restarts the pair whenever a contour runs out of room, and keeps only
   pairs that fit (with our walk and no help, 3-8 % of attempts fit at 64×64). We sample that
   conditional law more directly: each candidate's weight is multiplied by the probability that a
   contour from the state it leads to still fits in the window (a Doob h-transform for the walls,
   tabulated once per setting by dynamic programming on a 64×64×36 grid, ``_fit_table``). A
   contour that runs into another shape backs up a random number of dashes; after
   ``BACKTRACKS`` dead ends the pair starts again. (Backing up is an approximation of restarting.)
5. Distractors: ``budget // (contour_length // 3)`` contours of ``contour_length // 3`` dashes, each
   seeded at a random free point; one that cannot be finished in 5 tries is dropped, as in the
   original (which also drops them: ``allow_incomplete``).
6. Markers: one at the start of a random target contour; for a positive (label 1) the other at the
   far end of the *same* contour, for a negative (label 0) at the far end of the *other* one. The
   geometry is drawn before the label is looked at, so it carries no label information.
7. Rendering: target dashes, distractor dashes and markers are drawn as three layers at
   ``supersample`` times the resolution (lines ``round(thickness · supersample)`` pixels wide),
   each downsampled to ``W`` with Lanczos (ringing clipped at 0, as the original's uint8
   ``imresize``), scaled by its contrast, combined by a pixel-wise maximum and scaled so that the
   brightest pixel is 255 (the original's ``imsave`` byte-scaling).

Parameters (``SIZE_CONFIGS``) are the LRA builder's documented settings:

==========================  ==============  ==============  ==========================
                            32×32           64×64           128×128 (Path-X)
==========================  ==============  ==============  ==========================
dash length L               2               5               5
margin m (gap up to 2m)     1               1               2 or 3 (drawn per image)
line thickness              0.5             1               1.5
marker radius               1.5             2.5             3
seed distance               7               12              20
continuity                  1.0 (≤ 90°)     1.8 (≤ 50°)     1.8 (≤ 50°)
distractor budget           20              22              35
contrast target/distractor  1.5 / 2.0       0.8 / 0.8       0.9 / 0.9
==========================  ==============  ==============  ==========================

All sizes: 2× supersampling, 1-pixel padding, marker contrast 1. At 32×32 the targets' contrast
is the snake contrast 2 times the paddle contrast 0.75, while the original passes only the snake
contrast to distractors; we keep that. Difficulty is the contour length: 6 (``curv_baseline``),
9, and 14 (``curv_contour_length_14``, the hard level used by LRA).

Differences from the original, on purpose: float coordinates (it rounds every dash end to whole
pixels); exact distances and a fixed clearance (it thresholds blurred pixel masks, which lets
contours come closer than the gaps inside one and sometimes merge); all four target endpoints
kept clear; fit by the h-transform and backtracking instead of blind restarts; an exact 50/50
label split (one positive in every pair of consecutive indices, which one by a seeded coin)
instead of a coin per image; no stray single dashes (LRA sets ``use_single_paddles = False``).

Files: ``<out>/<folder>/imgs/<b>/sample_<i>.png`` (8-bit grayscale) and
``<out>/<folder>/metadata/<b>.npy``, a *text* file as in the LRA release, one line per image:
``imgs/<b> sample_<i>.png <i> <label> <continuity> <contour length> <distractor length>
<dash length> <thickness> <margin> 1`` (the original's field order). ``<folder>`` is
``curv_baseline``, ``curv_contour_length_9`` or ``curv_contour_length_14``. Image ``i`` of batch
``b`` is sample ``b · batch_size + i``; a sample depends only on (seed, its index, size, contour
length), not on ``n``, the batching or the number of worker processes.

    ssmzoo data pathfinder --out DIR --size 32 --n 1000 --seed 0 [--contour-length 14]

then ``PathfinderDataModule(data_dir=DIR/curv_contour_length_14, resolution=32)``.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import multiprocessing
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..data_command import DataCommand, run_command

SIZES = (32, 64, 128)
CONTOUR_LENGTHS = (6, 9, 14)
FOLDER_NAMES = {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}
# Bump when a change makes the same (seed, index, size, contour length) draw a different image, so that data
# cached by GeneratedPathfinderDataModule under an older version is generated again.
GENERATOR_VERSION = 1
DESCRIPTION = ("Generate LRA Pathfinder / Path-X images (ssmzoo's seeded generator, not the LRA release) in the "
               "official layout (<out>/curv_contour_length_14/imgs/<b>/sample_<i>.png, metadata/<b>.npy).")

# Extra edge-to-edge clearance between contours beyond the largest gap inside one (2·margin), so
# that "joined" and "separate" never look alike and the label follows from the geometry.
EXTRA_CLEARANCE = 0.5
TURN_CANDIDATES = 24  # turns considered per dash, evenly over the allowed range
SEED_CANDIDATES = 64  # positions tried per distractor seed
DISTRACTOR_TRIES = 5  # the original's max_distractor_contour_retrial = 4, i.e. 5 tries
TARGET_TRIES = 200  # attempts at the two target contours before giving up (never reached in practice)
BACKTRACKS = 40  # dead ends a pair of target contours may back out of before it is started again
BUCKETS = 8  # the spatial index has BUCKETS x BUCKETS cells
FIT_GRID = 64  # cells per side of the table of fit probabilities (0.5 px at 32, 2 px at 128)
FIT_HEADINGS = 36  # heading bins (10 degrees) of that table
FIT_TURNS = 16  # turn angles summed over when building it
_MARKER = -1  # the index of a marker disk among a contour's shapes


@dataclass(frozen=True)
class SizeConfig:
    """Drawing parameters for one image size, in window pixels (see the module docstring)."""

    paddle_length: float
    margins: tuple[int, ...]  # one is drawn per image; the gap between dashes is up to 2·margin
    thickness: float
    marker_radius: float
    seed_distance: float
    continuity: float
    distractor_budget: int  # distractor contours = budget // (contour_length // 3)
    target_contrast: float
    distractor_contrast: float
    marker_contrast: float = 1.0
    padding: float = 1.0
    supersample: int = 2


SIZE_CONFIGS = {
    32: SizeConfig(paddle_length=2, margins=(1,), thickness=0.5, marker_radius=1.5, seed_distance=7,
                   continuity=1.0, distractor_budget=20, target_contrast=1.5, distractor_contrast=2.0),
    64: SizeConfig(paddle_length=5, margins=(1,), thickness=1.0, marker_radius=2.5, seed_distance=12,
                   continuity=1.8, distractor_budget=22, target_contrast=0.8, distractor_contrast=0.8),
    128: SizeConfig(paddle_length=5, margins=(2, 3), thickness=1.5, marker_radius=3.0, seed_distance=20,
                    continuity=1.8, distractor_budget=35, target_contrast=0.9, distractor_contrast=0.9),
}


@dataclass
class PathfinderSample:
    """One generated image and the geometry it was drawn from.

    ``contours[0]`` and ``contours[1]`` are the target contours, the rest distractors; each is an
    array (dashes, 2 ends, xy). ``markers`` (2, xy) are the marker centres and ``marked`` the
    contours they sit on (equal for a positive)."""

    image: np.ndarray  # (size, size) uint8
    label: int
    contours: list[np.ndarray]
    markers: np.ndarray
    marked: tuple[int, int]
    margin: int
    size: int
    contour_length: int


# ----------------------------------------------------------------------------------------------------
# Geometry (plain Python floats: a scene holds a few dozen shapes, and a dash is usually placed at the
# first or second try, where numpy's per-call overhead would dominate)


def _seg_dist(ax: float, ay: float, bx: float, by: float, cx: float, cy: float, dx: float, dy: float) -> float:
    """Distance between segments ab and cd; a point is a segment with equal ends."""

    def point_seg2(px, py, qx, qy, rx, ry):  # squared distance from p to segment qr
        ux, uy = rx - qx, ry - qy
        vx, vy = px - qx, py - qy
        uu = ux * ux + uy * uy
        t = 0.0 if uu == 0.0 else min(1.0, max(0.0, (vx * ux + vy * uy) / uu))
        ex, ey = vx - t * ux, vy - t * uy
        return ex * ex + ey * ey

    def side(px, py, qx, qy, rx, ry):  # sign of the turn p -> q -> r
        return (qx - px) * (ry - py) - (qy - py) * (rx - px)

    if (side(ax, ay, bx, by, cx, cy) * side(ax, ay, bx, by, dx, dy) < 0
            and side(cx, cy, dx, dy, ax, ay) * side(cx, cy, dx, dy, bx, by) < 0):
        return 0.0
    return math.sqrt(min(point_seg2(ax, ay, cx, cy, dx, dy), point_seg2(bx, by, cx, cy, dx, dy),
                         point_seg2(cx, cy, ax, ay, bx, by), point_seg2(dx, dy, ax, ay, bx, by)))


@dataclass(eq=False)  # compared by identity when removed from the spatial index
class _Shape:
    """A dash (a != b) or a reserved marker disk (a == b, index _MARKER), with its half-width."""

    ax: float
    ay: float
    bx: float
    by: float
    half: float
    owner: int
    index: int

    def __post_init__(self) -> None:
        self.mx, self.my = (self.ax + self.bx) / 2, (self.ay + self.by) / 2
        self.half_length = math.hypot(self.bx - self.ax, self.by - self.ay) / 2
        self.cells: list[int] = []  # where the builder filed it


class _Builder:
    """Grows contours dash by dash, keeping every shape clear of the others (see the docstring)."""

    def __init__(self, cfg: SizeConfig, size: int, margin: int, rng: random.Random) -> None:
        self.cfg, self.size, self.margin, self.rng = cfg, size, margin, rng
        self.gap = 2 * margin + EXTRA_CLEARANCE
        self.half = cfg.thickness / 2
        # dash centre lines stay off the padding frame; marker disks stay inside the window
        self.lo, self.hi = cfg.padding + self.half, size - cfg.padding - self.half
        self.marker_lo, self.marker_hi = cfg.marker_radius, size - cfg.marker_radius
        # shapes are filed in a BUCKETS x BUCKETS grid under every cell within their reach, so a
        # candidate is checked only against the shapes filed under its midpoint's cell
        self.cell = size / BUCKETS
        self.reach = self.gap + max(self.half, cfg.marker_radius) + cfg.paddle_length / 2
        self.buckets: list[list[_Shape]] = [[] for _ in range(BUCKETS * BUCKETS)]
        self.shapes: dict[tuple[int, int], list[_Shape]] = {}  # (owner, dash index) -> the dash and its marker
        self.contours: list[list[tuple[float, float, float, float]]] = []
        self.theta: list[float] = []
        self.limit = math.pi / (2 * cfg.continuity)
        self.fit_tables: list[tuple[np.ndarray, ...] | None] = []  # per contour; None: unweighted
        self.occupied: np.ndarray | None = None  # (FIT_GRID, FIT_GRID) bool, rows y: no dash starts here

    def new_contour(self) -> int:
        self.contours.append([])
        self.theta.append(0.0)
        return len(self.contours) - 1

    def free(self, shape: _Shape) -> bool:
        """Whether ``shape`` keeps the clearance from every placed shape. A dash may touch its
        predecessor and its own contour's markers; a marker disk may touch its own contour."""
        marker = shape.index == _MARKER
        for other in self.buckets[self._bucket(shape.mx, shape.my)]:
            if other.owner == shape.owner and (marker or other.index == _MARKER or other.index == shape.index - 1):
                continue
            need = self.gap + shape.half + other.half
            reach = need + shape.half_length + other.half_length
            ex, ey = shape.mx - other.mx, shape.my - other.my
            if ex * ex + ey * ey >= reach * reach:
                continue
            if _seg_dist(shape.ax, shape.ay, shape.bx, shape.by, other.ax, other.ay, other.bx, other.by) < need:
                return False
        return True

    def _bucket(self, x: float, y: float) -> int:
        return self._cell_range(x) * BUCKETS + self._cell_range(y)

    def _file(self, shape: _Shape, key: tuple[int, int]) -> None:
        r = self.reach + shape.half
        i0, j0 = self._cell_range(min(shape.ax, shape.bx) - r), self._cell_range(min(shape.ay, shape.by) - r)
        i1, j1 = self._cell_range(max(shape.ax, shape.bx) + r), self._cell_range(max(shape.ay, shape.by) + r)
        shape.cells = [i * BUCKETS + j for i in range(i0, i1 + 1) for j in range(j0, j1 + 1)]
        for c in shape.cells:
            self.buckets[c].append(shape)
        self.shapes.setdefault(key, []).append(shape)

    def _cell_range(self, v: float) -> int:
        return min(max(int(v / self.cell), 0), BUCKETS - 1)

    def _unfile(self, key: tuple[int, int]) -> None:
        for shape in self.shapes.pop(key, []):
            for c in shape.cells:
                self.buckets[c].remove(shape)

    def _blocked(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """A quick, approximate test against the raster of ``_grow_distractors`` (when set): does a
        dash end lie where no dash may start? The exact test follows in ``free``."""
        if self.occupied is None:
            return False
        scale = FIT_GRID / self.size
        last = FIT_GRID - 1
        return bool(self.occupied[min(int(y0 * scale), last), min(int(x0 * scale), last)]
                    or self.occupied[min(int(y1 * scale), last), min(int(x1 * scale), last)])

    def _inside(self, x: float, y: float) -> bool:
        return self.lo <= x <= self.hi and self.lo <= y <= self.hi

    def _try_dash(self, owner: int, x0: float, y0: float, theta: float, marker_at: str) -> bool:
        """Place the dash of length L from (x0, y0) in direction theta if it fits; ``marker_at``
        ('start', 'end' or '') also reserves a marker disk there, which must fit too."""
        length = self.cfg.paddle_length
        x1, y1 = x0 + length * math.cos(theta), y0 + length * math.sin(theta)
        if not (self._inside(x0, y0) and self._inside(x1, y1)):
            return False
        dash = _Shape(x0, y0, x1, y1, self.half, owner, len(self.contours[owner]))
        if not self.free(dash):
            return False
        disk = None
        if marker_at:
            mx, my = (x0, y0) if marker_at == "start" else (x1, y1)
            if not (self.marker_lo <= mx <= self.marker_hi and self.marker_lo <= my <= self.marker_hi):
                return False
            disk = _Shape(mx, my, mx, my, self.cfg.marker_radius, owner, _MARKER)
            if not self.free(disk):
                return False
        key = (owner, dash.index)
        self._file(dash, key)
        if disk is not None:
            self._file(disk, key)
        self.contours[owner].append((x0, y0, x1, y1))
        self.theta[owner] = theta
        return True

    def fit(self, owner: int, x: float, y: float, theta: float, dashes_after: int) -> float:
        """h of the state reached (1 for contours grown without a fit table)."""
        table = self.fit_tables[owner] if owner < len(self.fit_tables) else None
        if table is None:
            return 1.0
        g = self.size / FIT_GRID
        i = min(max(int(x / g), 0), FIT_GRID - 1)
        j = min(max(int(y / g), 0), FIT_GRID - 1)
        k = int(round(theta / (2 * math.pi / FIT_HEADINGS))) % FIT_HEADINGS
        return float(table[dashes_after][i, j, k])

    def _choose(self, owner: int, candidates: list[tuple[float, float, float, float]], marker_at: str) -> bool:
        """Place the first of ``candidates`` (weight, x0, y0, theta) that fits, drawing them in
        turn with probability proportional to their weights."""
        rng = self.rng
        while candidates:
            total = sum(c[0] for c in candidates)
            if total <= 0:
                return False
            u, i = rng.random() * total, 0
            while i < len(candidates) - 1 and u >= candidates[i][0]:
                u -= candidates[i][0]
                i += 1
            _, x0, y0, theta = candidates.pop(i)
            if self._try_dash(owner, x0, y0, theta, marker_at):
                return True
        return False

    def seed(self, owner: int, candidates, with_marker: bool, length: int = 1) -> bool:
        """The first dash of ``owner`` from candidate (x, y, theta), weighted by the fit of a
        contour of ``length`` dashes from there."""
        marker_at = "start" if with_marker else ""
        if owner >= len(self.fit_tables) or self.fit_tables[owner] is None:
            return any(self._try_dash(owner, x, y, theta, marker_at) for x, y, theta in candidates)
        L = self.cfg.paddle_length
        weighted = [(self.fit(owner, x + L * math.cos(t), y + L * math.sin(t), t, length - 1), x, y, t)
                    for x, y, t in candidates]
        return self._choose(owner, weighted, marker_at)

    def extend(self, owner: int, final_marker: bool, dashes_after: int = 0) -> bool:
        """One more dash after a gap. As in the original, the candidate turns cover the allowed
        range evenly (``TURN_CANDIDATES`` of them, at a random common offset) and are weighted by
        cos²(continuity · turn), times the fit of the state each leads to when the contour has a
        fit table; they are tried in random order by weight until one fits."""
        m, L = self.margin, self.cfg.paddle_length
        theta = self.theta[owner]
        _, _, hx, hy = self.contours[owner][-1]
        px, py = hx + m * math.cos(theta), hy + m * math.sin(theta)  # the pivot, mid-gap
        c, limit = self.cfg.continuity, self.limit
        offset = self.rng.random()
        candidates = []
        for i in range(TURN_CANDIDATES):
            turn = ((i + offset) / TURN_CANDIDATES * 2 - 1) * limit
            new = theta + turn
            x0, y0 = px + m * math.cos(new), py + m * math.sin(new)
            x1, y1 = x0 + L * math.cos(new), y0 + L * math.sin(new)
            if self._inside(x0, y0) and self._inside(x1, y1) and not self._blocked(x0, y0, x1, y1):
                weight = math.cos(c * turn) ** 2 * self.fit(owner, x1, y1, new, dashes_after)
                if weight > 0:
                    candidates.append((weight, x0, y0, new))
        return self._choose(owner, candidates, "end" if final_marker else "")

    def pop(self, owner: int) -> None:
        """Undo the last dash of ``owner`` (and the end marker it may carry); never its first."""
        dashes = self.contours[owner]
        self._unfile((owner, len(dashes) - 1))
        dashes.pop()
        x0, y0, x1, y1 = dashes[-1]
        self.theta[owner] = math.atan2(y1 - y0, x1 - x0)

    def drop(self, owner: int) -> None:
        """Remove the last contour (a distractor that could not be finished)."""
        assert owner == len(self.contours) - 1
        self.clear(owner)
        self.contours.pop()
        self.theta.pop()

    def clear(self, owner: int) -> None:
        """Remove every dash of ``owner``."""
        for index in range(len(self.contours[owner])):
            self._unfile((owner, index))
        self.contours[owner] = []


@functools.lru_cache(maxsize=None)
def _fit_table(size: int, contour_length: int, margin: int) -> tuple[np.ndarray, ...]:
    """``h[n][i, j, k]``: the probability that a contour whose last dash ends in cell (i, j)
    heading in bin k can add ``n`` more dashes without leaving the window, for the walk that turns
    by the continuity density restricted to the turns that stay inside (the original's
    availability weighting, where the border counts as occupied).

    Weighting each candidate turn by ``h`` of the state it leads to (a Doob h-transform) samples
    contours from that walk *conditioned on fitting*: the same law as the original's restart until
    success, whose success rate at 64×64 is only a few per cent. Built once per setting by dynamic
    programming (about 0.3 s)."""
    cfg = SIZE_CONFIGS[size]
    g = size / FIT_GRID
    lo, hi = cfg.padding + cfg.thickness / 2, size - cfg.padding - cfg.thickness / 2
    centre = (np.arange(FIT_GRID) + 0.5) * g
    x, y = centre[:, None, None], centre[None, :, None]
    theta = (2 * np.pi / FIT_HEADINGS) * np.arange(FIT_HEADINGS)[None, None, :]
    limit = np.pi / (2 * cfg.continuity)
    turns = (np.arange(FIT_TURNS) + 0.5) / FIT_TURNS * 2 * limit - limit
    weights = np.cos(cfg.continuity * turns) ** 2
    inside, nxt = [], []
    for turn in turns:
        new = theta + turn
        sx = x + margin * (np.cos(theta) + np.cos(new))
        sy = y + margin * (np.sin(theta) + np.sin(new))
        ex, ey = sx + cfg.paddle_length * np.cos(new), sy + cfg.paddle_length * np.sin(new)
        ok = (sx >= lo) & (sx <= hi) & (sy >= lo) & (sy <= hi) & (ex >= lo) & (ex <= hi) & (ey >= lo) & (ey <= hi)
        i = np.clip((ex / g).astype(np.int64), 0, FIT_GRID - 1)
        j = np.clip((ey / g).astype(np.int64), 0, FIT_GRID - 1)
        k = np.rint(new / (2 * np.pi / FIT_HEADINGS)).astype(np.int64) % FIT_HEADINGS
        inside.append(np.broadcast_to(ok, (FIT_GRID, FIT_GRID, FIT_HEADINGS)))
        nxt.append((i * FIT_GRID + j) * FIT_HEADINGS + k)
    w_in = np.stack(inside) * weights[:, None, None, None]
    total = w_in.sum(axis=0)
    nxt_flat = np.stack(nxt)
    h = [np.ones((FIT_GRID, FIT_GRID, FIT_HEADINGS))]
    for _ in range(contour_length - 1):
        reach = (w_in * h[-1].reshape(-1)[nxt_flat]).sum(axis=0)
        h.append(np.divide(reach, total, out=np.zeros_like(reach), where=total > 0))
    return tuple(h)


def _grow_targets(b: _Builder, contour_length: int) -> bool:
    """Both target contours, seeded ``seed_distance`` apart near the centre and grown alternately
    (the shorter one grows next), each weighted to fit in the window (``_fit_table``). A contour
    that runs into another shape backs up a random number of dashes and tries again; after
    ``BACKTRACKS`` dead ends the pair is started again."""
    cfg, rng, size = b.cfg, b.rng, b.size
    table = _fit_table(size, contour_length, b.margin)
    b.fit_tables = [table, table]
    lo, hi = 2 * cfg.seed_distance, size - 2 * cfg.seed_distance
    first, second = b.new_contour(), b.new_contour()
    x1, y1 = rng.uniform(lo, hi), rng.uniform(lo, hi)
    firsts = [(x1, y1, rng.uniform(-math.pi, math.pi)) for _ in range(TURN_CANDIDATES)]
    if not b.seed(first, firsts, with_marker=True, length=contour_length):
        return False
    seconds = []
    for _ in range(SEED_CANDIDATES):
        phi = rng.uniform(-math.pi, math.pi)
        seconds.append((x1 + cfg.seed_distance * math.cos(phi), y1 + cfg.seed_distance * math.sin(phi),
                        rng.uniform(-math.pi, math.pi)))
    if not b.seed(second, seconds, with_marker=True, length=contour_length):
        return False
    dead_ends = 0
    while True:
        lengths = [len(b.contours[first]), len(b.contours[second])]
        if min(lengths) == contour_length:
            return True
        owner = first if lengths[0] <= lengths[1] else second
        after = contour_length - lengths[owner] - 1
        if b.extend(owner, final_marker=after == 0, dashes_after=after):
            continue
        dead_ends += 1
        if dead_ends > BACKTRACKS or lengths[owner] == 1:
            return False
        for _ in range(rng.randint(1, lengths[owner] - 1)):
            b.pop(owner)


def _mark_occupied(b: _Builder, draw: ImageDraw.ImageDraw, shapes: Sequence[_Shape]) -> None:
    """Paint where a new dash's start may not lie (closer than the clearance to ``shapes``) into a
    FIT_GRID x FIT_GRID raster."""
    scale = FIT_GRID / b.size
    for shape in shapes:
        need = (b.gap + b.half + shape.half) * scale
        a = (shape.ax * scale - 0.5, shape.ay * scale - 0.5)
        c = (shape.bx * scale - 0.5, shape.by * scale - 0.5)
        if shape.half_length > 0:
            draw.line([a, c], fill=255, width=max(1, int(round(2 * need))))
        for x, y in (a, c):
            draw.ellipse([x - need, y - need, x + need, y + need], fill=255)


def _seeds_in(free: np.ndarray, cell: float, rng: random.Random):
    """``SEED_CANDIDATES`` random (x, y, theta), each in a random cell of ``free`` (flat raster indices)."""
    for _ in range(SEED_CANDIDATES):
        y, x = divmod(int(free[rng.randrange(len(free))]), FIT_GRID)
        yield (x + rng.random()) * cell, (y + rng.random()) * cell, rng.uniform(-math.pi, math.pi)


def _grow_distractors(b: _Builder, count: int, length: int) -> None:
    """``count`` distractor contours of ``length`` dashes. As in the original, a contour starts at
    a point drawn from the free area (here a raster of where a dash may start, which also screens
    candidate dashes before the exact test), and one that cannot be finished in
    ``DISTRACTOR_TRIES`` tries is dropped."""
    occupied = Image.new("L", (FIT_GRID, FIT_GRID), 0)
    draw = ImageDraw.Draw(occupied)
    _mark_occupied(b, draw, [shape for shapes in b.shapes.values() for shape in shapes])
    cell = b.size / FIT_GRID
    centre = (np.arange(FIT_GRID) + 0.5) * cell
    inside = (centre >= b.lo) & (centre <= b.hi)
    inside = inside[:, None] & inside[None, :]
    for _ in range(count):
        owner = b.new_contour()
        b.occupied = np.asarray(occupied) > 0  # rows are y, columns x
        free = np.flatnonzero(~b.occupied & inside)
        for _ in range(DISTRACTOR_TRIES if len(free) else 0):
            if b.seed(owner, _seeds_in(free, cell, b.rng), with_marker=False) and all(
                b.extend(owner, final_marker=False) for _ in range(length - 1)
            ):
                _mark_occupied(b, draw, [b.shapes[(owner, i)][0] for i in range(length)])
                break
            b.clear(owner)
        if not b.contours[owner]:
            b.drop(owner)  # as the original does with a distractor it cannot finish
    b.occupied = None


# ----------------------------------------------------------------------------------------------------
# Rendering


def _draw(contours: Sequence[np.ndarray], discs: np.ndarray, size: int, scale: int, thickness: float,
          radius: float) -> Image.Image:
    """Dashes and disks drawn white on black at ``scale`` times ``size`` (PIL 'L' image)."""
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(round(thickness * scale)))
    for dashes in contours:
        for (x0, y0), (x1, y1) in dashes:
            # window coordinate u maps to pixel index u·scale - 0.5 (pixel k covers [k, k+1) / scale)
            draw.line([(x0 * scale - 0.5, y0 * scale - 0.5), (x1 * scale - 0.5, y1 * scale - 0.5)], fill=255, width=width)
    for x, y in discs:
        cx, cy, r = x * scale - 0.5, y * scale - 0.5, radius * scale
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return canvas


def _downsample(layer: Image.Image, size: int) -> np.ndarray:
    return np.asarray(layer.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def render_image(sample: PathfinderSample) -> np.ndarray:
    """The (size, size) uint8 image of a sample's geometry (see the module docstring, step 6)."""
    cfg, size = SIZE_CONFIGS[sample.size], sample.size
    no_discs = np.zeros((0, 2))
    s, t = cfg.supersample, cfg.thickness
    targets = _downsample(_draw(sample.contours[:2], no_discs, size, s, t, 0.0), size)
    distractors = _downsample(_draw(sample.contours[2:], no_discs, size, s, t, 0.0), size)
    markers = _downsample(_draw([], sample.markers, size, s, t, cfg.marker_radius), size)
    image = np.maximum(np.maximum(cfg.target_contrast * targets, cfg.distractor_contrast * distractors),
                       cfg.marker_contrast * markers)
    return np.floor(image * (255.0 / image.max()) + 0.5).astype(np.uint8)


def render_mask(sample: PathfinderSample, supersample: int = 8) -> np.ndarray:
    """The binary drawing (dashes and markers) at ``supersample`` times the resolution, before any
    downsampling: (size · supersample, size · supersample) bool."""
    cfg = SIZE_CONFIGS[sample.size]
    canvas = _draw(sample.contours, sample.markers, sample.size, supersample, cfg.thickness, cfg.marker_radius)
    return np.asarray(canvas) > 0


# ----------------------------------------------------------------------------------------------------
# Samples and files


def _check(size: int, contour_length: int, seed: int) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} (Pathfinder 32, 64, Path-X 128), got {size!r}")
    if contour_length not in CONTOUR_LENGTHS:
        raise ValueError(f"contour_length must be one of {CONTOUR_LENGTHS} (dashes per contour; 14 is LRA's hard "
                         f"level), got {contour_length!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def sample_label(seed: int, index: int) -> int:
    """Exactly one of indices 2k and 2k+1 is positive; a seeded coin per pair says which."""
    coin = int(np.random.default_rng([seed, index // 2, 0x1AB]).integers(2))
    return (index % 2) ^ coin


def make_sample(size: int = 32, contour_length: int = 14, seed: int = 0, index: int = 0) -> PathfinderSample:
    """Sample ``index`` of the data set with this seed, size and contour length (deterministic)."""
    _check(size, contour_length, seed)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    cfg = SIZE_CONFIGS[size]
    # Python's Mersenne Twister for the many scalar draws, seeded from (seed, index, size, length)
    rng = random.Random(int(np.random.SeedSequence([seed, index, size, contour_length]).generate_state(1, np.uint64)[0]))
    margin = cfg.margins[rng.randrange(len(cfg.margins))]
    for _ in range(TARGET_TRIES):
        b = _Builder(cfg, size, margin, rng)
        if _grow_targets(b, contour_length):
            break
    else:  # pragma: no cover - the settings leave plenty of room
        raise RuntimeError(f"Pathfinder: could not place two contours of {contour_length} dashes in a "
                           f"{size}x{size} image after {TARGET_TRIES} attempts (seed {seed}, index {index})")
    distractor_length = contour_length // 3
    _grow_distractors(b, cfg.distractor_budget // distractor_length, distractor_length)
    label = sample_label(seed, index)
    origin = rng.randrange(2)
    terminal = origin if label == 1 else 1 - origin
    contours = [np.array(c, dtype=np.float64).reshape(-1, 2, 2) for c in b.contours]
    markers = np.stack([contours[origin][0, 0], contours[terminal][-1, 1]])
    sample = PathfinderSample(image=np.zeros((size, size), np.uint8), label=label, contours=contours,
                              markers=markers, marked=(origin, terminal), margin=margin, size=size,
                              contour_length=contour_length)
    sample.image = render_image(sample)
    return sample


def _encoded_sample(job: tuple[int, int, int, int]) -> tuple[bytes, int, int]:
    """(PNG bytes, label, margin) of one sample; a top-level function so worker processes can run it."""
    size, contour_length, seed, index = job
    sample = make_sample(size, contour_length, seed, index)
    buffer = io.BytesIO()
    Image.fromarray(sample.image).save(buffer, format="PNG")
    return buffer.getvalue(), sample.label, sample.margin


def generate_pathfinder(
    out: str | Path,
    size: int = 32,
    n: int = 1000,
    seed: int = 0,
    contour_length: int = 14,
    batch_size: int = 1000,
    overwrite: bool = False,
    workers: int = 1,
) -> Path:
    """Write ``n`` samples under ``out/<folder>`` in the LRA layout and return that folder (the
    ``data_dir`` of ``PathfinderDataModule``). Refuses to write over earlier metadata unless
    ``overwrite`` (which first deletes that folder's ``imgs/`` and ``metadata/``). ``workers`` > 1
    draws samples in that many processes; the files are the same either way."""
    _check(size, contour_length, seed)
    for name, value in (("n", n), ("batch_size", batch_size), ("workers", workers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    folder = Path(out).expanduser() / FOLDER_NAMES[contour_length]
    meta_dir = folder / "metadata"
    if meta_dir.is_dir() and any(meta_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"Pathfinder: {meta_dir} already holds metadata; choose another out, or pass "
                                  "overwrite=True (--overwrite) to replace that data set")
        shutil.rmtree(meta_dir)
        shutil.rmtree(folder / "imgs", ignore_errors=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    cfg = SIZE_CONFIGS[size]
    distractor_length = contour_length // 3
    jobs = ((size, contour_length, seed, index) for index in range(n))
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_encoded_sample, jobs, chunksize=16) if pool else map(_encoded_sample, jobs)
        for batch in range((n + batch_size - 1) // batch_size):
            sub = f"imgs/{batch}"
            (folder / sub).mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(min(batch_size, n - batch * batch_size)):
                png, label, margin = next(results)
                name = f"sample_{i}.png"
                (folder / sub / name).write_bytes(png)
                lines.append(f"{sub} {name} {i} {label} {cfg.continuity} {contour_length} {distractor_length} "
                             f"{cfg.paddle_length} {cfg.thickness} {margin} 1")
            # written last, so an interrupted run leaves no metadata naming missing images
            (meta_dir / f"{batch}.npy").write_text("\n".join(lines) + "\n")
    finally:
        if pool:
            pool.terminate()
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``ssmzoo data pathfinder``."""
    parser.add_argument("--out", required=True, help="output folder; the data set goes in <out>/<curv_...>/")
    parser.add_argument("--size", type=int, choices=SIZES, default=32, help="32 or 64 (Pathfinder), 128 (Path-X)")
    parser.add_argument("--n", type=int, default=1000, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contour-length", type=int, choices=CONTOUR_LENGTHS, default=14,
                        help="difficulty: dashes per contour (6 easy, 9 intermediate, 14 hard as in LRA)")
    parser.add_argument("--batch-size", type=int, default=1000, help="images per imgs/<b> folder and metadata file")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier data set in the same folder")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing samples (same files for any number)")


def run(args: argparse.Namespace) -> Path:
    """Generate what ``args`` asks for and print what was written, saying that it is generated data. Bad
    arguments raise a ValueError that names the flag."""
    for flag, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    start = time.perf_counter()
    folder = generate_pathfinder(args.out, size=args.size, n=args.n, seed=args.seed,
                                 contour_length=args.contour_length, batch_size=args.batch_size,
                                 overwrite=args.overwrite, workers=args.workers)
    seconds = time.perf_counter() - start
    positives = sum(sample_label(args.seed, i) for i in range(args.n))
    print(f"wrote {args.n} GENERATED {args.size}x{args.size} Pathfinder images (ssmzoo's seeded generator, not the "
          f"LRA release; contour length {args.contour_length}, seed {args.seed}) to {folder} in {seconds:.1f} s "
          f"({args.n / seconds:.0f} images/s); label 1 (same contour): {positives}, label 0: {args.n - positives}")
    print(f"read it with PathfinderDataModule(data_dir={str(folder)!r}, resolution={args.size}), or let "
          f"GeneratedPathfinderDataModule(n={args.n}, resolution={args.size}) generate and cache it")
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m ssmzoo.data.lra.pathfinder_generator``: the same as ``ssmzoo data pathfinder``."""
    parser = argparse.ArgumentParser(prog="ssmzoo data pathfinder", description=DESCRIPTION)
    add_arguments(parser)
    return run_command(parser.prog, run, parser.parse_args(argv))


PATHFINDER = DataCommand(
    name="pathfinder",
    help="generate Pathfinder / Path-X images (seeded; generated data, not the LRA release) in the official layout",
    add_arguments=add_arguments,
    run=run,
)


if __name__ == "__main__":
    main(sys.argv[1:])
