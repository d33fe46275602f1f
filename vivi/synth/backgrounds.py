"""Background families: the texture a video's theme keeps for all its shots.

A background *family* (stripes, checker, ...) belongs to a video's theme, so it is video-level
signal; a background *instance* (two palette colours, frequency, angle, phase, low-frequency
shading) belongs to a shot, so a cut changes it abruptly. The family is also the label of the
texture task (the "specialized" group of the downstream suite, like DTD or EuroSAT in VTAB).

Patterns are functions of WORLD coordinates, so camera pan and zoom move the background like a
real scene. Every pattern is smooth (a sigmoid of a periodic function, never a hard step) and is
modulated by a few low-frequency waves: the colours of a background then spread over several
histogram bins, which is what keeps the colour histogram stable under lighting drift and video
coding noise (a flat colour would jump bins all at once and fake a cut).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BACKGROUND_FAMILIES = ("plain", "stripes", "checker", "dots", "rings", "waves", "grid", "camo")


@dataclass(frozen=True)
class BackgroundInstance:
    """The background of one shot."""
    family: int                 # index into BACKGROUND_FAMILIES
    colors: np.ndarray          # (2, 3) RGB in [0, 1], mixed by the pattern
    frequency: float            # pattern cycles per world unit (the screen is 2 units wide at zoom 1)
    angle: float                # pattern orientation in radians
    phase: np.ndarray           # (2,) pattern offsets in cycles
    sharpness: float            # sigmoid gain: higher gives crisper edges between the two colours
    contrast: float             # how far the pattern swings from the mean colour towards each
                                # colour (1 = fully); below 1 the texture stays ground, not figure
    shading: np.ndarray         # (3, 4) low-frequency waves: amplitude, frequency, angle, phase
    warp: np.ndarray | None = None  # (2, 3) slow bending of the pattern: amplitude (world units),
                                    # frequency (cycles per world unit), phase; None: unbent


def sample_background(rng: np.random.Generator, family: int, colors: np.ndarray,
                      warp: float = 0.0) -> BackgroundInstance:
    """A random instance of ``family`` with the two given colours.

    ``warp`` > 0 bends the pattern over large distances (a displacement of up to ``warp`` x
    0.5 pattern periods that changes over ~5 world units), so that a camera travelling across it
    sees the texture's local angle and spacing change while its family stays. Drawn last, and only
    with ``warp`` > 0, so that the other draws are the same with and without it."""
    frequency = {"plain": 0.3, "rings": 1.6, "grid": 1.3, "dots": 2.0}.get(
        BACKGROUND_FAMILIES[family], 1.5) * rng.uniform(0.7, 1.3)
    shading = np.stack([
        rng.uniform(0.03, 0.06, 3),             # amplitude (colour units)
        rng.uniform(0.3, 1.0, 3),               # frequency (cycles per world unit)
        rng.uniform(0, np.pi, 3),               # angle
        rng.uniform(0, 2 * np.pi, 3),           # phase
    ], axis=1)
    fields = dict(family=int(family), colors=np.asarray(colors, np.float32),
                  frequency=float(frequency), angle=float(rng.uniform(0, np.pi)),
                  phase=rng.uniform(0, 1, 2), sharpness=float(rng.uniform(3.0, 6.0)),
                  contrast=float(rng.uniform(0.35, 0.8)), shading=shading)
    if warp > 0:
        fields["warp"] = np.stack([warp * rng.uniform(0.25, 0.5, 2) / frequency,
                                   rng.uniform(0.15, 0.25, 2), rng.uniform(0, 2 * np.pi, 2)], axis=1)
    return BackgroundInstance(**fields)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def pattern(background: BackgroundInstance, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mixing weight in [0, 1] between the two colours at world coordinates (x, y)."""
    return 0.5 + background.contrast * (_texture(background, x, y) - 0.5)


def _texture(background: BackgroundInstance, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The family's pattern at full contrast, in [0, 1]."""
    name = BACKGROUND_FAMILIES[background.family]
    if background.warp is not None:        # bend: x moves with y and y with x, slowly
        (ax, fx, px), (ay, fy, py) = background.warp.tolist()
        x, y = x + ax * np.sin((2 * math.pi * fx) * y + px), y + ay * np.sin((2 * math.pi * fy) * x + py)
    # Python floats keep float32 arrays float32 (numpy scalars would promote to float64).
    c, s, f = math.cos(background.angle), math.sin(background.angle), background.frequency
    p0, p1 = float(background.phase[0]), float(background.phase[1])
    along = (c * x + s * y) * f + p0
    across = (-s * x + c * y) * f + p1
    k = background.sharpness
    two_pi = 2 * math.pi
    if name == "plain":          # one broad gradient: no texture at all
        return _sigmoid(2.0 * np.sin(two_pi * along))
    if name == "stripes":
        return _sigmoid(k * np.sin(two_pi * along))
    if name == "checker":
        return _sigmoid(k * np.sin(two_pi * along) * np.sin(two_pi * across))
    if name == "dots":           # distance to the nearest lattice point, continuous across cells
        du = along - np.floor(along) - 0.5
        dv = across - np.floor(across) - 0.5
        return _sigmoid(k * 4 * (0.28 - np.sqrt(du * du + dv * dv)))
    if name == "rings":          # concentric around a world point set by the phase
        r = np.sqrt((along - 4 * p0) ** 2 + (across - 4 * p1) ** 2)
        return _sigmoid(k * np.sin(two_pi * r))
    if name == "waves":
        return _sigmoid(k * np.sin(two_pi * (along + 0.3 * np.sin(two_pi * 0.6 * across))))
    if name == "grid":           # thin lines of colour 1 on colour 0
        line = np.maximum(np.cos(two_pi * along), np.cos(two_pi * across))
        return _sigmoid(k * 3 * (line - 0.75))
    if name == "camo":           # blobs from three crossed waves
        w = (np.sin(two_pi * along) + np.sin(two_pi * (0.5 * along + 0.87 * across))
             + np.sin(two_pi * (0.5 * along - 0.87 * across + 0.3)))
        return _sigmoid(k * w)
    raise KeyError(f"unknown background family {name!r}; valid: {', '.join(BACKGROUND_FAMILIES)}")


def shading(background: BackgroundInstance, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Additive low-frequency brightness variation, in colour units."""
    total = 0
    for amplitude, frequency, angle, phase in background.shading.tolist():
        wave = 2 * math.pi * frequency * (math.cos(angle) * x + math.sin(angle) * y) + phase
        total = total + amplitude * np.sin(wave)
    return total
