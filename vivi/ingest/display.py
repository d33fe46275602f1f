"""How a decoded frame is meant to be shown: its display rotation/mirroring and its pixel shape.

Phones store a portrait video as landscape frames plus a display matrix that turns them upright;
DV and DVD video have non-square pixels. Players show such videos upright and at their display
aspect (so does the ffmpeg command line, by default), and ingest stores frames the same way: a
portrait phone video gives portrait frames, not sideways ones (rotation prediction, Rot-YT-F,
and every orientation-sensitive downstream task would otherwise learn from sideways frames).

The rule is FFmpeg's autorotation (fftools): the display matrix's angle picks a quarter turn, the
signs of its entries pick a mirror. Angles that are not a multiple of 90 degrees (FFmpeg rotates
those by any angle, cutting the corners) are taken to the nearest quarter turn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
from av.sidedata.sidedata import Type

_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


@dataclass(frozen=True)
class Display:
    """The transform from a decoded frame to the frame as shown.

    ``rotation_cw``: quarter turns clockwise (0, 90, 180, 270) applied to the decoded frame, then
    ``hflip``: mirrored left to right (with the rotations this gives all 8 orientations).
    ``aspect``: the sample (pixel) aspect ratio, shown width of a pixel over its height.
    """
    rotation_cw: int = 0
    hflip: bool = False
    aspect: float = 1.0

    @property
    def transposes(self) -> bool:
        """Whether the shown frame has the decoded frame's width as its height."""
        return self.rotation_cw in (90, 270)

    def shown_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width`` x ``height`` decoded frame as shown."""
        width = max(1, round(width * self.aspect))
        return (height, width) if self.transposes else (width, height)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The (H, W, C) ``image`` of a decoded frame (resized, still in the decoded orientation), turned as shown."""
        if self.rotation_cw:
            image = cv2.rotate(image, _ROTATE[self.rotation_cw])
        if self.hflip:
            image = cv2.flip(image, 1)
        return image

    def record(self) -> dict:
        """The dataset record's description of the transform."""
        return {"rotation_cw": self.rotation_cw, "hflip": self.hflip, "sample_aspect": round(self.aspect, 6)}


def orientation(matrix) -> tuple[int, bool]:
    """(quarter turns clockwise, mirror) that show a frame as its 3x3 display ``matrix`` (nine
    int32, FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX`` layout, 16.16 fixed point) says."""
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    scale_0, scale_1 = math.hypot(a, c), math.hypot(b, d)
    if not scale_0 or not scale_1:
        return 0, False
    # The counter-clockwise angle the matrix turns the frame by (libavutil's
    # av_display_rotation_get) is minus this one, the clockwise angle a player turns it by.
    theta = math.degrees(math.atan2(b / scale_1, a / scale_0))
    quarter = round(theta / 90) % 4
    if quarter == 1:      # clockwise; with c > 0 the matrix mirrors too: the frame is transposed
        return (90, True) if c > 0 else (90, False)
    if quarter == 3:      # counter-clockwise; with c < 0 the other diagonal
        return (270, True) if c < 0 else (270, False)
    if quarter == 2:      # half a turn is both flips; one of them alone is a mirror
        if a < 0 and d < 0:
            return 180, False
        return (0, True) if a < 0 else (180, True) if d < 0 else (0, False)
    return (180, True) if d < 0 else (0, False)


def frame_display(frame, stream) -> Display:
    """The :class:`Display` of a decoded PyAV ``frame`` of ``stream``: the frame's display
    matrix (FFmpeg attaches the container's to every frame) and the stream's sample aspect."""
    rotation_cw, hflip = 0, False
    side = frame.side_data.get(Type.DISPLAYMATRIX)
    if side is not None:
        values = np.frombuffer(bytes(side), np.int32)
        if len(values) == 9:
            rotation_cw, hflip = orientation(values)
    aspect = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    aspect = float(Fraction(aspect)) if aspect and aspect > 0 else 1.0
    return Display(rotation_cw, hflip, aspect)
