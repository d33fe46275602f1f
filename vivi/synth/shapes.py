"""Object classes of the synthetic world: one 2-D shape per class, as a signed distance function.

The object level of the hierarchy (Object-centric §3) needs objects whose
class is carried by their SHAPE alone: every object is painted with colours of its video's
palette, so colour never tells the class, and only a representation of shape can put two
objects of one class together. Each class is a signed distance function (negative inside) of
object coordinates ``(u, v)`` in which the shape fits in the unit disc, x to the right and y
down as in images. Distances let the renderer anti-alias edges and draw rims at any scale.

The formulas for star, heart and the polygon helper follow Inigo Quilez's catalogue of 2-D
distance functions (iquilezles.org/articles/distfunctions2d); unions (``min``) and differences
(``max(a, -b)``) are exact outside one shape and good near edges, which is all the renderer uses.
All functions are elementwise numpy and work on arrays of any shape (frames x height x width).
"""
from __future__ import annotations

import math

import numpy as np


def _length(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sqrt(u * u + v * v)


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    du = np.abs(u) - half_u
    dv = np.abs(v) - half_v
    outside = _length(np.maximum(du, 0), np.maximum(dv, 0))
    return outside + np.minimum(np.maximum(du, dv), 0)


def _convex_polygon(u: np.ndarray, v: np.ndarray, vertices) -> np.ndarray:
    """Max over edges of the signed distance to the edge line, for vertices in either winding.
    Exact inside and along edges; outside the corners it underestimates, which only softens
    corners by a fraction of a pixel."""
    vertices = np.asarray(vertices, dtype=np.float64)
    x, y = vertices[:, 0], vertices[:, 1]
    if (x * np.roll(y, -1) - np.roll(x, -1) * y).sum() < 0:   # make the winding the one assumed
        vertices = vertices[::-1]
    distance = None
    for (x0, y0), (x1, y1) in zip(vertices.tolist(), np.roll(vertices, -1, axis=0).tolist()):
        nx, ny = y1 - y0, x0 - x1          # outward normal for this winding
        norm = math.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm      # Python floats keep float32 arrays float32
        d = nx * u + ny * v - (nx * x0 + ny * y0)
        distance = d if distance is None else np.maximum(distance, d)
    return distance


def _regular_polygon(n: int, radius: float, start_angle: float) -> np.ndarray:
    angles = start_angle - 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def disc(u, v):
    return _length(u, v) - 0.9


def square(u, v):
    return _box(u, v, 0.68, 0.68)


_TRIANGLE = _regular_polygon(3, 0.95, -np.pi / 2)    # one vertex up


def triangle(u, v):
    return _convex_polygon(u, v - 0.24, _TRIANGLE)   # centre the bounding box, not the centroid


def star(u, v):
    """Five-pointed star (Quilez ``sdStar5``, r = 0.95, inner ratio 0.45), one point up."""
    r, rf = 0.95, 0.45
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x = -k1x
    x = np.abs(u)
    y = -v                                   # the formula has y up
    d = np.maximum(k1x * x + k1y * y, 0) * 2
    x, y = x - d * k1x, y - d * k1y
    d = np.maximum(k2x * x + k1y * y, 0) * 2
    x, y = x - d * k2x, y - d * k1y
    x = np.abs(x)
    y = y - r
    bax, bay = rf * -k1y, rf * k1x - 1
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0, r)
    return _length(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def cross(u, v):
    return np.minimum(_box(u, v, 0.85, 0.28), _box(u, v, 0.28, 0.85))


def ring(u, v):
    return np.abs(_length(u, v) - 0.66) - 0.26


def heart(u, v):
    """Quilez ``sdHeart``, point down, scaled to fit the unit disc."""
    scale = 0.62
    x = np.abs(u) * scale
    y = 0.55 - v * scale                     # formula has y up with the point at y = 0
    upper = _length(x - 0.25, y - 0.75) - math.sqrt(2) / 4
    m = 0.5 * np.maximum(x + y, 0)
    lower = np.sqrt(np.minimum((x * x + (y - 1) ** 2), (x - m) ** 2 + (y - m) ** 2))
    lower = lower * np.sign(x - y)
    return np.where(x + y > 1, upper, lower) / scale


def crescent(u, v):
    """A disc minus an offset disc; the horns point to +x."""
    return np.maximum(_length(u, v) - 0.9, -(_length(u - 0.45, v) - 0.72))


_ARROW_HEAD = np.array([[0.95, 0.0], [0.15, 0.62], [0.15, -0.62]])


def arrow(u, v):
    """Shaft and head; the arrow points to +x."""
    return np.minimum(_box(u + 0.35, v, 0.52, 0.2), _convex_polygon(u, v, _ARROW_HEAD))


_CHEVRON_OUTER = np.array([[0.9, 0.0], [-0.55, 0.85], [-0.55, -0.85]])
_CHEVRON_INNER = _CHEVRON_OUTER + np.array([-0.6, 0.0])


def chevron(u, v):
    """A triangle minus a shifted copy: a '>' pointing to +x."""
    return np.maximum(_convex_polygon(u, v, _CHEVRON_OUTER), -_convex_polygon(u, v, _CHEVRON_INNER))


# The class table. A class id is the index in this tuple; ``world.json`` stores the names.
# No ellipse or hexagon: at the demo's training size a hexagon looks like a disc and a squashed
# disc like an ellipse, so the object level could not tell them apart (docs/design-notes.md).
OBJECT_CLASSES = (
    ("disc", disc),
    ("square", square),
    ("triangle", triangle),
    ("star", star),
    ("cross", cross),
    ("ring", ring),
    ("heart", heart),
    ("crescent", crescent),
    ("arrow", arrow),
    ("chevron", chevron),
)
CLASS_NAMES = tuple(name for name, _ in OBJECT_CLASSES)
SHAPE_SDF = tuple(sdf for _, sdf in OBJECT_CLASSES)

# Classes without rotational symmetry: their orientation is well defined over 360 degrees, so the
# orientation task draws only these (the "zero" orientation is the one the function draws).
ORIENTED_CLASSES = tuple(CLASS_NAMES.index(n) for n in ("heart", "crescent", "arrow", "chevron"))


def class_id(name: str) -> int:
    """Class id for a name; an unknown name lists the valid ones."""
    if name not in CLASS_NAMES:
        raise KeyError(f"unknown object class {name!r}; valid: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(name)
