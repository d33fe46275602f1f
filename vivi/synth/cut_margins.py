"""The colour-histogram margins every synthetic cut and shot is drawn to meet.

VIVI finds shots with a colour-histogram cut detector (VIVI §4, after Mas & Fernandez 2003;
docs/reference.md, "Shot-cut detection"; ``vivi/ingest/cut_detector.py``): half the L1 distance
between joint colour histograms with 4 bits per channel (4096 bins), a cut where it exceeds a
threshold (0.4). Such a detector may histogram RGB pixels, or the Y/Cb/Cr planes a 4:2:0 decoder
outputs (as vivi's does); the two see different distances (chroma is coarse in YCbCr bins, so
colour changes count for less). The world therefore measures both, and draws shot set-ups until
the distance across each cut is large and the distance between consecutive frames of a shot is
small in BOTH colour spaces. Measured here on the rendered frames; video coding noise adds about
0.05 within shots (tests check decoded videos).

Kept apart from the detector on purpose: the world states what it guarantees in its own terms,
and the detector is tested against that, rather than the world adapting to the detector.
"""
from __future__ import annotations

import numpy as np

BITS = 4

# BT.601 "studio swing" RGB -> YCbCr, what swscale uses for rgb24 -> yuv420p by default.
_YCBCR = np.array([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]], np.float32) / 255.0
_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)


def _joint_histograms(channels: np.ndarray) -> np.ndarray:
    """(T, N, 3) uint8 samples -> (T, 4096) histograms summing to 1."""
    q = (channels >> (8 - BITS)).astype(np.int32)
    index = (q[..., 0] << (2 * BITS)) | (q[..., 1] << BITS) | q[..., 2]
    bins = 1 << (3 * BITS)
    num = len(channels)
    index = index + (np.arange(num, dtype=np.int32) * bins)[:, None]
    counts = np.bincount(index.ravel(), minlength=num * bins).reshape(num, bins)
    return counts / counts.sum(1, keepdims=True)


def rgb_histograms(rgb: np.ndarray) -> np.ndarray:
    """Joint RGB histograms of (T, H, W, 3) uint8 frames."""
    return _joint_histograms(rgb.reshape(len(rgb), -1, 3))


def ycbcr_histograms(rgb: np.ndarray) -> np.ndarray:
    """Joint Y/Cb/Cr histograms at 4:2:0 chroma resolution (one luma sample per chroma sample),
    as a detector reading decoded planes sees them."""
    num, height, width = rgb.shape[:3]
    even = rgb[:, :height - height % 2, :width - width % 2].astype(np.float32)
    top_left = even[:, 0::2, 0::2]
    blocks = (top_left + even[:, 1::2, 0::2] + even[:, 0::2, 1::2] + even[:, 1::2, 1::2]) * 0.25
    luma = np.tensordot(top_left, _YCBCR[:1].T, axes=1) + _OFFSET[:1]       # (T, h, w, 1)
    chroma = np.tensordot(blocks, _YCBCR[1:].T, axes=1) + _OFFSET[1:]       # (T, h, w, 2)
    samples = np.concatenate([luma, chroma], axis=-1) + 0.5
    return _joint_histograms(np.clip(samples, 0, 255).astype(np.uint8).reshape(num, -1, 3))


def histogram_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Half L1 distance between histograms along the last axis, in [0, 1]."""
    return 0.5 * np.abs(a - b).sum(-1)


def frame_signatures(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both histograms of each frame: (RGB, YCbCr), each (T, 4096)."""
    return rgb_histograms(rgb), ycbcr_histograms(rgb)


def cut_distance(before, after) -> float:
    """Smallest distance over the colour spaces between two frames' signatures (index -1 / 0)."""
    return float(min(histogram_distance(b[-1], a[0]) for b, a in zip(before, after)))


def max_step_distance(signatures) -> float:
    """Largest distance over colour spaces between consecutive frames of one shot."""
    if len(signatures[0]) < 2:
        return 0.0
    return float(max(histogram_distance(h[1:], h[:-1]).max() for h in signatures))
