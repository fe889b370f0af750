"""Procedural nadir drone scenes with exact labels, written in the Semantic Drone Dataset's Kaggle layout.

Contract
--------
* :func:`render_scene` returns ``(image, mask)``: image (H, W, 3) uint8 RGB, mask (H, W) uint8 source indices
  of :meth:`ClassTable.builtin` (never 23 ``conflicting``; 0 ``unlabeled`` does not occur).
* Object sizes and texture scales are fractions of the short side (the scene spans 30-60 m), so a 6000x4000
  scene is a 768x512 one at higher resolution. Labels and colour edges are drawn at full size; textures,
  relief and shadows at most 640 px on the short side, then upsampled (bounded memory and time).
* Colour alone does not give the class: greens (grass, vegetation, tree), greys and browns (paved, gravel,
  dirt, roof, car) and blues (pool, water) overlap; texture, shading, shape and context tell them apart.
* :func:`write_synthetic` writes ``original_images/<id>.jpg``, ``label_images_semantic/<id>.png`` (L),
  ``RGB_color_image_masks/<id>.png`` (RGB), ``class_dict_seg.csv`` and ``splits/{train,val}.txt``;
  image i depends only on ``(seed, i)``.

>>> image, mask = render_scene(64, 48, np.random.default_rng(0))
>>> image.shape, image.dtype.name, mask.shape, 0 < int(mask.min()) and int(mask.max()) < 23
((48, 64, 3), 'uint8', (48, 64), True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from droneseg.classes import ClassTable
from droneseg.errors import DataError
from droneseg.files import atomic_save, atomic_write_text

_TABLE = ClassTable.builtin()
_MIN_SIDE = 16
_TEX_SHORT = 640  # texture grid short side: finer detail would only be sensor noise at full size
_BAND = 256  # rows composited at a time, so a 6000x4000 scene needs no full-size float image

# class: (base colours, luminance noise gains at cells of 12 m, 2.5 m, 0.6 m and one texture pixel, chroma gain)
_LOOK: dict[str, tuple[tuple[tuple[int, int, int], ...], tuple[float, float, float, float], float]] = {
    "paved-area": (((92, 92, 96), (118, 116, 112), (150, 146, 138), (140, 114, 102)), (0.07, 0.05, 0.04, 0.07), 0.03),
    "dirt": (((128, 102, 76), (144, 120, 90), (108, 90, 70)), (0.16, 0.13, 0.08, 0.06), 0.14),
    "grass": (((78, 110, 52), (96, 122, 58), (114, 124, 70)), (0.12, 0.07, 0.06, 0.07), 0.18),
    "gravel": (((124, 116, 104), (140, 134, 124), (108, 104, 98)), (0.05, 0.05, 0.12, 0.22), 0.04),
    "water": (((42, 64, 72), (40, 60, 94), (60, 82, 72)), (0.10, 0.03, 0.02, 0.02), 0.06),
    "rocks": (((104, 98, 90), (78, 72, 66)), (0.05, 0.20, 0.16, 0.10), 0.04),
    "pool": (((64, 142, 168), (84, 160, 176), (48, 112, 140)), (0.04, 0.04, 0.02, 0.02), 0.02),
    "vegetation": (((84, 108, 50), (98, 118, 58), (64, 92, 44)), (0.06, 0.18, 0.16, 0.08), 0.14),
    "roof": (((150, 78, 62), (86, 86, 92), (124, 118, 112), (100, 64, 54)), (0.04, 0.03, 0.04, 0.08), 0.03),
    "wall": (((190, 180, 166), (160, 152, 142), (204, 198, 188)), (0.03, 0.03, 0.02, 0.03), 0.02),
    "fence": (((150, 126, 100), (128, 128, 126)), (0.02, 0.02, 0.05, 0.08), 0.02),
    "person": (((200, 60, 50), (40, 60, 130), (220, 220, 210), (40, 40, 44), (90, 130, 70)), (0, 0, 0.03, 0.05), 0),
    "car": (((226, 226, 222), (226, 226, 222), (172, 172, 176), (112, 112, 118), (112, 112, 118), (38, 38, 42),
             (150, 32, 30), (42, 62, 120)), (0.01, 0.01, 0.02, 0.03), 0.0),
    "tree": (((58, 86, 42), (46, 76, 36), (72, 96, 46)), (0.08, 0.25, 0.18, 0.08), 0.12),
    "bald-tree": (((112, 100, 88), (92, 84, 76)), (0.02, 0.05, 0.08, 0.10), 0.03),
    "ar-marker": (((24, 24, 26), (232, 232, 228)), (0, 0, 0.01, 0.02), 0),
    "obstacle": (((170, 124, 62), (92, 110, 140), (150, 150, 146)), (0.02, 0.05, 0.06, 0.06), 0.04),
}
_GAINS = np.array([_LOOK[n][1] if n in _LOOK else (0, 0, 0, 0) for n in _TABLE.names], np.float32)  # (24, 4)
_CHROMA = np.array([_LOOK[n][2] if n in _LOOK else 0 for n in _TABLE.names], np.float32)  # (24,)
_NO_STRIPES = (0.0, 0.0, 1.0)
_TO_YELLOW, _TO_GREEN = np.array([0.7, 0.4, -0.3], np.float32), np.array([0.6, 0.0, 0.6], np.float32)


def _rotate(pts: np.ndarray, angle: float, c: np.ndarray) -> np.ndarray:
    """(n, 2) points rotated by ``angle`` (radians) about the origin, then moved to ``c``."""
    co, si = np.cos(angle), np.sin(angle)
    return pts @ np.array([[co, si], [-si, co]]) + c


def _rect(c: np.ndarray, a: float, b: float, angle: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle with half sizes a (along ``angle``) and b."""
    return _rotate(np.array([[-a, -b], [a, -b], [a, b], [-a, b]], float), angle, c)


def _shape(c: np.ndarray, a: float, b: float, angle: float, rng: np.random.Generator,
           p: float = 2.0, rough: float = 0.0, n: int = 24) -> np.ndarray:
    """Superellipse polygon (n, 2): p=2 an ellipse, p=6-8 a rounded rectangle; ``rough`` wobbles the radius."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    xy = np.stack([a * np.sign(ct) * np.abs(ct) ** (2 / p), b * np.sign(st) * np.abs(st) ** (2 / p)], 1)
    k = np.arange(2, 6)
    wobble = 1 + rough * (rng.uniform(-1, 1, 4) / k) @ np.cos(np.outer(k, t) + rng.uniform(0, 2 * np.pi, (4, 1)))
    return _rotate(xy * wobble[:, None], angle, c)


def _sides(pts: np.ndarray, d: np.ndarray) -> list[np.ndarray]:
    """Side quads of the prism swept by moving polygon ``pts`` by ``d``."""
    nxt = np.roll(pts, -1, 0)
    return [np.stack([p, q, q + d, p + d]) for p, q in zip(pts, nxt)]


def _noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w) float32 value noise: a normal grid ``cell`` pixels apart, bilinearly upsampled."""
    h, w = shape
    cell = max(cell, 1.0)
    grid = Image.fromarray(rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32))
    return np.asarray(grid.resize((w, h), Image.BILINEAR, box=(0, 0, w / cell, h / cell)), np.float32)


class _Canvas:
    """Instances drawn in painter's order at full size, with relief and cast-shadow layers at texture size.

    Coordinates are full-size pixels; ``meter`` is pixels per metre. An instance row is (class, r, g, b,
    texture gain, stripe amplitude, stripe angle, stripe period in metres).
    """

    def __init__(self, width: int, height: int, rng: np.random.Generator, gsd: float | None = None) -> None:
        self.size, self.rng = (width, height), rng
        short = min(width, height)
        span = rng.uniform(30.0, 60.0)  # drawn either way: a fixed gsd changes the scale, not the scene's stream
        self.meter = short / span if gsd is None else 1.0 / gsd
        self.f = min(1.0, _TEX_SHORT / short)
        self.tex_size = (max(1, round(width * self.f)), max(1, round(height * self.f)))
        sun, lean = rng.uniform(0, 2 * np.pi, 2)
        self.sun_u = np.array([np.cos(sun), np.sin(sun)])  # direction shadows fall
        self.sun = self.sun_u * rng.uniform(0.5, 1.1) * self.meter  # shadow offset per metre of height
        self.lean = np.array([np.cos(lean), np.sin(lean)]) * rng.uniform(0.1, 0.2) * self.meter  # roof offset / m
        self.shade = np.array([0.62, 0.58, 0.48], np.float32) * rng.uniform(0.6, 1.0)  # bluish shadows
        self.layers = {"inst": Image.new("I", self.size), "relief": Image.new("L", self.tex_size, 128),
                       "shadow": Image.new("L", self.tex_size, 0)}
        self.draws = {k: ImageDraw.Draw(v) for k, v in self.layers.items()}
        self.rows: list[tuple[float, ...]] = [(0, 0, 0, 0, 0, *_NO_STRIPES)]
        self.taken: list[tuple[float, float, float]] = []  # discs (x, y, r) that later objects avoid
        self.roads = np.zeros((0, 3))  # road centre points (x, y, half width incl. sidewalk)

    def pick(self, name: str, i: int | None = None) -> np.ndarray:
        colours = _LOOK[name][0]
        return np.array(colours[self.rng.integers(len(colours)) if i is None else i], float)

    def add(self, name: str, color: np.ndarray | None = None, gain: float = 1.0,
            stripe: tuple[float, float, float] = _NO_STRIPES) -> int:
        """A new instance of class ``name`` with a jittered colour; returns its id."""
        base = self.pick(name) if color is None else color
        rgb = np.clip(base * self.rng.uniform(0.88, 1.12) * self.rng.uniform(0.95, 1.05, 3), 0, 255)
        self.rows.append((_TABLE.index(name), *rgb, gain * self.rng.uniform(0.7, 1.3), *stripe))
        return len(self.rows) - 1

    def draw(self, layer: str, pts: np.ndarray, value: int, width: float | None = None) -> None:
        """Fill a polygon (a polyline when ``width`` is given) on one layer: inst, relief (128 flat) or shadow."""
        scale = 1.0 if layer == "inst" else self.f
        flat = (pts * scale).ravel().tolist()
        if width is None:
            self.draws[layer].polygon(flat, fill=value)
        else:
            self.draws[layer].line(flat, fill=value, width=max(1, round(width * scale)), joint="curve")

    def poly(self, pts: np.ndarray, iid: int, relief: int = 128, lift: bool = False,
             width: float | None = None) -> None:
        """Draw an instance (a polyline when ``width`` is given); ``lift``: it stands above shadows below it."""
        self.draw("inst", pts, iid, width)
        self.draw("relief", pts, relief, width)
        if lift:
            self.draw("shadow", pts, 0, width)

    def cast(self, pts: np.ndarray, d: np.ndarray, width: float | None = None) -> None:
        """Shadow of an object of footprint ``pts`` whose top is offset by ``d`` pixels."""
        if width is not None:
            for k in (0.25, 0.5, 0.75, 1.0):
                self.draw("shadow", pts + k * d, 255, width)
            return
        for quad in [pts, pts + d, *_sides(pts, d)]:
            self.draw("shadow", quad, 255)

    def free(self, p: np.ndarray, r: float, road: bool = True) -> bool:
        """Whether a disc of radius r at p keeps off taken discs (and off roads when ``road``)."""
        taken = np.array(self.taken).reshape(-1, 3)
        if np.any(np.hypot(*(taken[:, :2] - p).T) < taken[:, 2] + r):
            return False
        return not (road and np.any(np.hypot(*(self.roads[:, :2] - p).T) < self.roads[:, 2] + r))

    def spot(self, r: float, road: bool = True, tries: int = 40) -> np.ndarray | None:
        """A random free centre for a disc of radius r, which is then taken; None when none is found."""
        for _ in range(tries):
            p = self.rng.uniform(0, 1, 2) * self.size
            if self.free(p, r, road):
                self.taken.append((*p, r))
                return p
        return None

    def photo(self, inst: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8: base colours x (texture, stripes, relief, shadow, light) at texture size, + sensor."""
        rng, (w, h), (tw, th) = self.rng, self.size, self.tex_size
        rows = np.array(self.rows, np.float32)  # (N, 8)
        it = np.asarray(self.layers["inst"].resize(self.tex_size, Image.NEAREST))  # (th, tw) instance ids
        cls, mt = rows[it, 0].astype(np.intp), self.meter * self.f  # texture pixels per metre
        # 1. luminance: value noise octaves weighted per class, scaled per instance
        octaves = [_noise((th, tw), cell * mt, rng) for cell in (12.0, 2.5, 0.6)]
        octaves = np.stack([*octaves, 0.6 * rng.standard_normal((th, tw), dtype=np.float32)], -1)
        lum = 1 + np.einsum("hwk,hwk->hw", _GAINS[cls], octaves) * rows[it, 4]
        # 2. directional grain (mowing stripes, roof tiles, pavers); the id shifts each instance's phase
        yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
        ang, per = rows[it, 6], np.maximum(rows[it, 7] * mt, 2.5)
        lum += rows[it, 5] * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * (2 * np.pi / per) + it)
        # 3. relief shading, light gradient, chroma drift, cast shadows, white balance and exposure
        lum *= np.asarray(self.layers["relief"].filter(ImageFilter.GaussianBlur(0.4 * mt)), np.float32) / 128
        gx, gy = rng.uniform(-0.2, 0.2, 2)
        lum *= 1 + gx * (xx / tw - 0.5) + gy * (yy / th - 0.5)
        drift = _noise((th, tw), 6 * mt, rng)[..., None]  # > 0 towards yellow-brown, < 0 towards deeper green
        chroma = _CHROMA[cls][..., None] * drift * np.where(drift > 0, _TO_YELLOW, _TO_GREEN)
        shadow = np.asarray(self.layers["shadow"].filter(ImageFilter.GaussianBlur(0.1 * mt)), np.float32) / 255
        gain = lum[..., None] * (1 + chroma) * (1 - shadow[..., None] * self.shade)
        gain *= rng.uniform(0.94, 1.06, 3) * rng.uniform(0.85, 1.1)
        gain8 = Image.fromarray(np.clip(gain * 100, 0, 255).astype(np.uint8))  # gain in percent, 0..2.55
        gain8 = np.asarray(gain8.resize(self.size, Image.BILINEAR))  # (H, W, 3)
        # 4. full size, in row bands: crisp base colours x upsampled gain, lens blur, then sensor noise
        rgb, out = rows[:, 1:4], np.empty((h, w, 3), np.uint8)
        for r in range(0, h, _BAND):
            out[r:r + _BAND] = np.clip(rgb[inst[r:r + _BAND]] * gain8[r:r + _BAND] * 0.01, 0, 255)
        out = np.array(Image.fromarray(out).filter(ImageFilter.GaussianBlur(0.4 * min(w, h) / 512)))
        sigma = rng.uniform(1.5, 3.5)
        for r in range(0, h, _BAND):
            band = out[r:r + _BAND]
            band[...] = np.clip(band + sigma * rng.standard_normal(band.shape, dtype=np.float32), 0, 255)
        return out


def _frame(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit tangents and normals (n, 2) along a polyline."""
    tng = np.gradient(pts, axis=0)
    tng /= np.hypot(*tng.T)[:, None]
    return tng, np.stack([-tng[:, 1], tng[:, 0]], 1)


def _band(pts: np.ndarray, half: float) -> np.ndarray:
    """Polygon of a strip of half width ``half`` around a polyline (no joint gaps, unlike thick PIL lines)."""
    _, nrm = _frame(pts)
    return np.concatenate([pts + nrm * half, (pts - nrm * half)[::-1]])


def _mow(rng: np.random.Generator) -> tuple[float, float, float]:
    """Mowing stripes (amplitude, angle, period m) on about half the lawns."""
    return rng.uniform(0.04, 0.09) * (rng.random() < 0.5), rng.uniform(0, np.pi), rng.uniform(2.0, 4.0)


def _ground_and_roads(cv: _Canvas) -> list[tuple[np.ndarray, float, float]]:
    """Grass with dirt, gravel and grass patches; 1-2 roads. Returns [(centre line (96, 2), half width, sidewalk)]."""
    rng, m, (w, h) = cv.rng, cv.meter, cv.size
    cv.poly(_rect(np.array([w, h]) / 2, w / 2 + 1, h / 2 + 1, 0.0), cv.add("grass", stripe=_mow(rng)))
    for k in range(rng.integers(3, 8)):
        name = ("dirt", "gravel")[rng.integers(2)] if k == 0 else ("grass", "grass", "dirt", "gravel")[rng.integers(4)]
        r, c = rng.uniform(5, 16) * m, rng.uniform(0, 1, 2) * cv.size
        cv.poly(_shape(c, r, r * rng.uniform(0.5, 1), rng.uniform(0, np.pi), rng, rough=0.3, n=32),
                cv.add(name, stripe=_mow(rng) if name == "grass" else _NO_STRIPES))
    roads = []
    for _ in range(rng.integers(1, 3)):
        c, ang = rng.uniform(0.2, 0.8, 2) * cv.size, rng.uniform(0, np.pi)
        u, reach = np.array([np.cos(ang), np.sin(ang)]), 0.75 * np.hypot(w, h)
        bend = np.array([-u[1], u[0]]) * rng.uniform(-0.5, 0.5) * min(w, h) * (rng.random() < 0.5)
        t = np.linspace(0, 1, 96)[:, None]  # quadratic Bezier through c + bend / 2
        pts = (1 - t) ** 2 * (c - u * reach) + 2 * (1 - t) * t * (c + bend) + t**2 * (c + u * reach)
        roads.append((pts, rng.uniform(2.8, 4.2) * m, rng.uniform(1.2, 2.5) * m))
    for pts, hw, side in roads:  # all sidewalks first, so a crossing road's asphalt runs through
        cv.poly(_band(pts, hw + side), cv.add("paved-area", cv.pick("paved-area", 2)))
    for pts, hw, _ in roads:
        cv.poly(_band(pts, hw), cv.add("paved-area", cv.pick("paved-area", rng.integers(2))))
    for pts, hw, side in roads:
        dash = cv.add("paved-area", np.array([214.0, 214, 208]), gain=0.3)
        for j in range(0, len(pts) - 1, 3):
            cv.poly(pts[j:j + 2], dash, width=0.15 * m)
        cv.roads = np.concatenate([cv.roads, np.column_stack([pts, np.full(len(pts), hw + side)])])
    return roads


def _hedges(cv: _Canvas, roads: list[tuple[np.ndarray, float, float]]) -> None:
    """Hedges along roadsides (vegetation), some with a fence behind them."""
    rng, m = cv.rng, cv.meter
    for pts, hw, side in roads:
        if rng.random() < 0.7:
            _, nrm = _frame(pts)
            s, width, i0 = rng.choice((-1, 1)), rng.uniform(0.9, 1.6) * m, rng.integers(0, 60)
            seg = slice(i0, i0 + rng.integers(15, 36))
            line = pts[seg] + s * nrm[seg] * (hw + side + width / 2 + 0.3 * m)
            if np.any(np.hypot(*(line[:, None] - cv.roads[:, :2]).transpose(2, 0, 1)) < cv.roads[:, 2]):
                continue  # it would cross another road
            cv.cast(_band(line, width / 2), cv.sun * rng.uniform(1.0, 2.0))
            cv.poly(_band(line, width / 2), cv.add("vegetation"), relief=100, lift=True)
            cv.draw("relief", _band(line - cv.sun_u * width * 0.2, width / 4), 145)
            if rng.random() < 0.5:
                fence = line + s * nrm[seg] * (width / 2 + 0.5 * m)
                cv.cast(fence, cv.sun * 1.2, width=0.12 * m)
                cv.poly(fence, cv.add("fence"), lift=True, width=0.12 * m)


def _house(cv: _Canvas, c: np.ndarray, a: float, b: float, ang: float) -> None:
    """Shadow, walls swept from the footprint to the leaning roof (lit per face), a gable or flat roof."""
    rng, m = cv.rng, cv.meter
    height = rng.uniform(3.5, 9.0)
    foot, lean, wall = _rect(c, a, b, ang), cv.lean * height, cv.pick("wall")
    cv.cast(foot, cv.sun * height)
    for quad in _sides(foot, lean):
        e = quad[1] - quad[0]
        facing_sun = -np.array([e[1], -e[0]]) @ cv.sun_u / np.hypot(*e)  # outward normal against the shadows
        cv.poly(quad, cv.add("wall", wall * (0.8 + 0.3 * facing_sun)), lift=True)
    top = c + lean
    if rng.random() < 0.7:
        base = cv.pick("roof")  # gable: two slopes lit differently, tile rows along the ridge
        v = np.array([-np.sin(ang), np.cos(ang)])
        for s in (-1, 1):
            slope = cv.add("roof", base * (0.88 - 0.22 * s * v @ cv.sun_u), stripe=(0.1, ang + np.pi / 2, 0.35))
            cv.poly(_rect(top + s * v * b / 2, a, b / 2, ang), slope, lift=True)
    else:  # flat: a light parapet around a gravelly deck
        base = cv.pick("roof", rng.integers(1, 3))
        cv.poly(foot + lean, cv.add("roof", base * 1.1, gain=0.5), lift=True)
        cv.poly(_rect(top, a - 0.5 * m, b - 0.5 * m, ang), cv.add("roof", base * 0.9, gain=2.2), lift=True)


def _lots(cv: _Canvas) -> list[tuple[np.ndarray, float]]:
    """A plaza, houses with driveways, pools with decks, a pond. Returns parking places [(centre, angle)]."""
    rng, m, road_pts = cv.rng, cv.meter, cv.roads[:, :2]
    parking: list[tuple[np.ndarray, float]] = []
    a, b, ang = rng.uniform(6, 10) * m, rng.uniform(4, 6.5) * m, rng.uniform(0, np.pi)
    c = cv.spot(0.8 * np.hypot(a, b)) if rng.random() < 0.5 else None
    if c is not None:  # plaza with a row of parked cars
        cv.poly(_shape(c, a, b, ang, rng, p=8, n=32), cv.add("paved-area", cv.pick("paved-area", 3),
                                                              stripe=(0.05, ang, 0.6)))
        u, v = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        row = np.arange(-a + 1.5 * m, a - 1.4 * m, 2.7 * m)
        parking += [(c + u * x - v * (b - 2.6 * m), ang + np.pi / 2) for x in row if rng.random() < 0.6]
    houses = []
    for _ in range(rng.integers(2, 6)):
        a, b = rng.uniform(4, 7.5) * m, rng.uniform(3.5, 5.5) * m
        c = cv.spot(np.hypot(a, b) + m)
        if c is None:
            continue
        j = int(np.argmin(np.hypot(*(road_pts - c).T)))
        tng = road_pts[min(j + 1, len(road_pts) - 1)] - road_pts[max(j - 1, 0)]
        u = (road_pts[j] - c) / np.hypot(*(road_pts[j] - c))
        ang = np.arctan2(tng[1], tng[0]) + rng.uniform(-0.2, 0.2) + np.pi / 2 * rng.integers(2)
        houses.append((c, a, b, ang, u, np.hypot(*(road_pts[j] - c)) - cv.roads[j, 2]))
    wet = False
    for c, a, b, ang, u, dist in houses:
        cv.poly(np.stack([c, c + u * dist]), cv.add(("paved-area", "gravel")[rng.random() < 0.35]),
                width=rng.uniform(2.6, 3.6) * m)
        if rng.random() < 0.5 and dist > np.hypot(a, b) + 6 * m:
            parking.append((c + u * (np.hypot(a, b) + 3 * m), np.arctan2(u[1], u[0])))
        pa, pb = rng.uniform(2.5, 5) * m, rng.uniform(1.8, 3) * m
        rp = np.hypot(pa, pb) + 1.3 * m
        yard = [c + d * (np.hypot(a, b) + rp + 2 * m) for d in (-u, u[::-1] * (-1, 1), u[::-1] * (1, -1))]
        p = next((q for q in yard if (0 < q).all() and (q < cv.size).all() and cv.free(q, rp)), None)
        if rng.random() < 0.5 and p is not None:  # pool with a paved deck
            cv.taken.append((*p, rp))
            deck = cv.add("paved-area", cv.pick("paved-area", 2))
            cv.poly(_shape(p, pa + 1.2 * m, pb + 1.2 * m, ang, rng, p=8), deck)
            cv.poly(_shape(p, pa, pb, ang, rng, p=6), cv.add("pool", stripe=(0.03, rng.uniform(0, np.pi), 1.2)))
            wet = True
    r = rng.uniform(3.5, 8) * m
    c = cv.spot(r) if not wet or rng.random() < 0.5 else None
    if c is not None:  # pond with reeds
        ang = rng.uniform(0, np.pi)
        cv.poly(_shape(c, 1.15 * r, 0.8 * r, ang, rng, rough=0.2, n=40), cv.add("vegetation"), relief=110)
        cv.poly(_shape(c, r, 0.7 * r, ang, rng, rough=0.3, n=40), cv.add("water", stripe=(0.03, ang, 0.5)))
    for c, a, b, ang, *_ in houses:
        _house(cv, c, a, b, ang)
    return parking


def _car(cv: _Canvas, p: np.ndarray, ang: float) -> None:
    """Rounded body with windscreen and rear window, and its shadow."""
    rng, m = cv.rng, cv.meter
    a, b = max(rng.uniform(2.1, 2.45) * m, 2.0), max(rng.uniform(0.88, 0.98) * m, 1.0)
    body, u = _shape(p, a, b, ang, rng, p=6), np.array([np.cos(ang), np.sin(ang)])
    cv.cast(body, cv.sun * 1.5)
    cv.poly(body, cv.add("car"), relief=120, lift=True)
    for x, da in ((0.35, 0.14), (-0.62, 0.09)):
        cv.poly(_rect(p + u * a * x, a * da, b * 0.8, ang), cv.add("car", np.array([40.0, 46, 56])), lift=True)


def _tree(cv: _Canvas, p: np.ndarray, r: float, name: str = "tree") -> None:
    """A round crown, darker away from the sun, with a shadow cast from its height (also bushes)."""
    rng = cv.rng
    height = r / cv.meter * rng.uniform(1.8, 2.8) if name == "tree" else 1.2
    crown = _shape(p, r, r * rng.uniform(0.85, 1), rng.uniform(0, np.pi), rng, rough=0.15)
    cv.cast(crown + 0.4 * height * cv.sun, 0.6 * height * cv.sun)
    cv.poly(crown, cv.add(name), relief=88, lift=True)
    cv.draw("relief", (crown - p) * 0.62 + p - cv.sun_u * 0.3 * r, 150)  # lit side


def _vehicles_and_plants(cv: _Canvas, roads: list[tuple[np.ndarray, float, float]],
                         parking: list[tuple[np.ndarray, float]]) -> None:
    """Bushes, cars on roads and parking places, then tree clusters and street trees over them."""
    rng, m = cv.rng, cv.meter
    for _ in range(rng.integers(3, 10)):
        r = rng.uniform(0.7, 2.0) * m
        if (p := cv.spot(r)) is not None:
            _tree(cv, p, r, "vegetation")
    for k, (pts, hw, _) in enumerate(roads):
        tng, nrm = _frame(pts)
        inside = np.flatnonzero((pts > 0).all(1) & (pts < cv.size).all(1))
        for j in rng.choice(inside, min(len(inside), rng.integers(k == 0, 4)), replace=False):
            s = rng.choice((-1, 1))
            parking.append((pts[j] + s * nrm[j] * hw * 0.5, np.arctan2(tng[j, 1], tng[j, 0]) + np.pi * (s < 0)))
    for p, ang in parking:
        if cv.free(p, 2.3 * m, road=False):
            cv.taken.append((*p, 2.3 * m))
            _car(cv, p, ang)
    trees = [(p, rng.uniform(1.8, 4.5) * m) for c in rng.uniform(0, 1, (rng.integers(4, 9), 2)) * cv.size
             for p in c + rng.normal(0, 3.5 * m, (rng.integers(1, 7), 2))]  # clusters
    pts, hw, side = roads[0]
    r, (_, nrm) = rng.uniform(2, 3.5) * m, _frame(pts)
    trees += [(pts[j] + nrm[j] * (hw + side + 0.6 * r), r) for j in range(0, len(pts), 4)] if rng.random() < 0.4 else []
    for p, r in trees:  # the trunk keeps off roads and houses, the crown may overhang them
        if cv.free(p, 0.3 * r):
            _tree(cv, p, r)
            cv.taken.append((*p, r))


def _people_and_extras(cv: _Canvas) -> None:
    """People with long shadows; maybe rocks, a bald tree, an AR marker, an obstacle."""
    rng, m = cv.rng, cv.meter
    hair = np.array([[40.0, 32, 26], [92, 70, 50], [160, 140, 100]])
    for _ in range(rng.integers(2, 8)):
        if (p := cv.spot(0.5 * m, road=False)) is not None:
            ang = rng.uniform(0, 2 * np.pi)
            body = _shape(p, max(0.2 * m, 0.8), max(0.34 * m, 1.2), ang, rng)
            cv.cast(body, cv.sun * 1.7)
            cv.poly(body, cv.add("person"), lift=True)
            cv.poly(_shape(p, 0.12 * m, 0.12 * m, ang, rng, n=10), cv.add("person", hair[rng.integers(3)]), lift=True)
    if rng.random() < 0.4 and (c := cv.spot(2 * m)) is not None:
        for q in c + rng.normal(0, 0.8 * m, (rng.integers(3, 9), 2)):
            r = rng.uniform(0.2, 0.6) * m
            rock = _shape(q, r, 0.8 * r, rng.uniform(0, np.pi), rng, rough=0.3, n=12)
            cv.cast(rock, cv.sun * r / m)
            cv.poly(rock, cv.add("rocks"), relief=105, lift=True)
            cv.draw("relief", (rock - q) * 0.5 + q - cv.sun_u * 0.3 * r, 150)
    if rng.random() < 0.3 and (c := cv.spot(3 * m)) is not None:
        bald, height = cv.add("bald-tree"), rng.uniform(4, 8)
        for ang in rng.uniform(0, 2 * np.pi) + np.arange(rng.integers(6, 10)) * 0.75:
            u = np.array([np.cos(ang), np.sin(ang)])
            branch = np.stack([c, c + u * m + u[::-1] * [-1, 1] * 0.3 * m, c + u * rng.uniform(1.8, 3) * m])
            cv.cast(branch + 0.7 * height * cv.sun, 0.3 * height * cv.sun, width=0.15 * m)
            cv.poly(branch, bald, lift=True, width=0.15 * m)
    if rng.random() < 0.3 and (c := cv.spot(0.8 * m)) is not None:
        ang = rng.uniform(0, np.pi)
        for half, tone in ((0.45, 0), (0.33, 1), (0.2, 0)):
            cv.poly(_rect(c, half * m, half * m, ang), cv.add("ar-marker", cv.pick("ar-marker", tone), gain=0.2))
    if rng.random() < 0.35 and (c := cv.spot(1.6 * m)) is not None:
        box = _rect(c, rng.uniform(0.5, 1.4) * m, rng.uniform(0.4, 1.0) * m, rng.uniform(0, np.pi))
        cv.cast(box, cv.sun * rng.uniform(0.5, 1.5))
        cv.poly(box, cv.add("obstacle"), relief=120, lift=True)


def render_scene(width: int, height: int, rng: np.random.Generator, gsd: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One scene from ``rng``: (H, W, 3) uint8 RGB photo and (H, W) uint8 source-index mask. ``gsd``: metres per
    pixel (default: the short side spans 30-60 m, drawn from ``rng``)."""
    if min(width, height) < _MIN_SIDE:
        raise DataError(f"scene size {width}x{height} is below the minimum {_MIN_SIDE}x{_MIN_SIDE}")
    if gsd is not None and not gsd > 0:
        raise DataError(f"gsd must be a positive number of metres per pixel, got {gsd}")
    cv = _Canvas(int(width), int(height), rng, gsd)
    roads = _ground_and_roads(cv)
    _hedges(cv, roads)
    parking = _lots(cv)
    _vehicles_and_plants(cv, roads, parking)
    _people_and_extras(cv)
    inst = np.asarray(cv.layers["inst"])  # (H, W) int32 instance ids
    classes = np.array([row[0] for row in cv.rows], np.uint8)
    return cv.photo(inst), classes[inst]


def _replace(path: Path, write: str | Image.Image, quality: int | None = None) -> None:
    """Write text, a PNG or (with ``quality``) a JPEG through the package's atomic writer."""
    if isinstance(write, str):
        atomic_write_text(path, write)
    else:
        atomic_save(path, lambda fh: write.save(fh, format="PNG" if quality is None else "JPEG",
                                                **({} if quality is None else {"quality": quality})))


SYNTHETIC_MARK = "SYNTHETIC.txt"
"""The file :func:`write_synthetic` leaves in its dataset folder, saying the data is drawn, not photographed."""


def write_synthetic(out: str | Path, n: int, size: tuple[int, int] = (768, 512), seed: int = 0,
                    val_fraction: float = 0.2, jpeg_quality: int = 92) -> Path:
    """Write ``n`` scenes of ``size`` (width, height) in the Kaggle layout into a new or empty folder ``out``.

    Image i is drawn from ``default_rng([seed, i])``, so a larger ``n`` only appends scenes. The validation
    split is a seeded subset of round(n * val_fraction) ids (at least one when n >= 2 and val_fraction > 0).
    """
    out = Path(out)
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    width, height = size
    if min(width, height) < _MIN_SIDE:
        raise DataError(f"size {width}x{height} is below the minimum {_MIN_SIDE}x{_MIN_SIDE}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; synthetic data never overwrites files")
    folders = [out / d for d in ("original_images", "label_images_semantic", "RGB_color_image_masks", "splits")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{name}, {r}, {g}, {b}\n" for name, (r, g, b) in zip(_TABLE.names, _TABLE.colors.tolist()))
    _replace(out / "class_dict_seg.csv", "name, r, g, b\n" + rows)
    ids = [f"{i:0{max(3, len(str(n - 1)))}d}" for i in range(n)]
    for i, name in enumerate(ids):
        image, mask = render_scene(width, height, np.random.default_rng([seed, i]))
        _replace(folders[0] / f"{name}.jpg", Image.fromarray(image), quality=jpeg_quality)
        _replace(folders[1] / f"{name}.png", Image.fromarray(mask))
        _replace(folders[2] / f"{name}.png", Image.fromarray(_TABLE.index_to_rgb(mask)))
    n_val = round(n * val_fraction)
    if n >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    split_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(n,)))  # apart from the images' streams
    val = set(split_rng.choice(n, n_val, replace=False).tolist())
    _replace(folders[3] / "train.txt", "".join(f"{d}\n" for i, d in enumerate(ids) if i not in val))
    _replace(folders[3] / "val.txt", "".join(f"{d}\n" for i, d in enumerate(ids) if i in val))
    # what the data is, for a model card: drawn here, free of any dataset's licence (SYNTHETIC_MARK)
    _replace(out / SYNTHETIC_MARK, f"Synthetic scenes drawn by droneseg synth (seed {seed}), in the Semantic Drone "
                                   "Dataset's class table; no photo of any dataset is in this folder.\n")
    return out
