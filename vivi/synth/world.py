"""The synthetic video world: configuration, themes, seeds, and how shots are set up and move.

The world is built so that every level of the VIVI hierarchy carries its own signal:

* video -> a THEME: a set of object classes, a colour palette and a background family, shared by
  all shots of the video (what the video-level losses can predict from one shot to the next;
  ``theme_background`` / ``theme_palette`` off leave the shots only the classes to share);
* shot -> a camera SET-UP: a background instance, camera position and zoom, lighting, and the
  objects (with ``cast`` the video's own objects, the same number, classes and sizes in every
  shot, at new places: then count and scale belong to the video, docs/design-notes.md); frames
  of one shot look alike (what the shot-level exemplar loss uses) and a cut changes the set-up
  abruptly (what the colour-histogram cut detector finds);
* frame -> the set-up at one instant: objects move, rotate, scale and deform smoothly, the
  camera pans and zooms, the lighting drifts; with ``tracking`` the camera travels with the
  objects, so the background slides by behind them (then a shot holds its objects constant but
  not its stretch of background, which a frame's crops cannot imitate: docs/design-notes.md);
* object -> a shape class (``shapes.py``) painted with the theme's palette, so that only shape
  tells the class (what the object-level loss of the object-centric paper uses).

Everything random is drawn from numpy generators seeded by :func:`rng_for`, one independent stream
per (seed, domain, index). Videos, themes and downstream-task images use different domains, so
the task images are held out from the videos by construction, and the output does not depend on
the number of worker processes.
"""
from __future__ import annotations

import colorsys
import math
import typing
from dataclasses import dataclass, field, replace

import numpy as np

from vivi.registry import typed_value

from .backgrounds import BACKGROUND_FAMILIES, BackgroundInstance, sample_background
from .shapes import CLASS_NAMES

# Seed domains: the first entropy word after the user seed. Never reuse one for another purpose.
THEME_DOMAIN = 0
VIDEO_DOMAIN = 1
TASK_DOMAIN = 2
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def rng_for(seed: int, domain: int, *index: int) -> np.random.Generator:
    """Independent generator for one (seed, domain, index...) key (numpy SeedSequence)."""
    return np.random.default_rng(np.random.SeedSequence([seed, domain, *index]))


@dataclass(frozen=True)
class WorldConfig:
    """Generator settings; ``world.json`` stores them with the output."""
    videos: int = 200               # number of videos
    seconds: float = 20.0           # length of every video
    fps: int = 10                   # frame rate: 10 is enough for smooth motion (the cut detector
                                    # needs small change between frames) and gives the 1 Hz frame
                                    # sampler of ingest 10 candidates per second, at 1/3 the cost of 30
    size: int = 64                  # frame width = height in pixels; even, for yuv420p
    seed: int = 0                   # the world seed; every random choice derives from it
    shots: tuple[int, int] = (2, 8)         # min and max shots per video (fewer if too short)
    min_shot_seconds: float = 1.5           # no shot is shorter: the detector needs >= 4 frames,
                                            # and the 1 Hz sampler needs >= 1 frame per shot
    themes: int = 32                        # number of themes; videos draw one uniformly
    classes_per_theme: tuple[int, int] = (3, 4)     # object classes a theme uses (min, max)
    palette_size: int = 5                   # colours per theme: 2 for the background, the rest
                                            # for objects, so objects contrast with the background
    objects_per_shot: tuple[int, int] = (1, 3)      # objects in a shot (min, max); few and large, so
                                                    # that a box covers cells of the feature grid
                                                    # (docs/design-notes.md; the paper caps boxes at 5)
    object_radius: tuple[float, float] = (0.25, 0.5)  # an object's radius on screen in its shot's first
                                                    # frame (screen units: the frame is 2 wide), log-uniform
    object_textures: bool = False   # objects painted with stripes, two tones or rings (else plain):
                                    # textures hide the silhouette, the class, at small sizes
    object_spin: tuple[float, float] = (0.05, 0.3)      # an object's turning speed, rad/s (x motion)
    object_wander: tuple[float, float] = (0.05, 0.25)   # amplitude of its wandering, screen units (x motion)
    motion: float = 1.0             # scales object and camera speeds; ~2.5 is "strong motion"
    lighting_drift: float = 1.0     # scales within-shot lighting change; ~2.5 is "strong"
    tracking: float = 0.0           # tracking shots: the camera travels across the background at
                                    # up to 0.3 x this (x motion) world units/s, the objects with it
    tracking_share: float = 1.0     # with tracking > 0: the fraction of shots that are tracking shots
    background_warp: float = 0.0    # bends backgrounds over large distances (see backgrounds.py)
    theme_background: bool = True   # False: each shot draws its own background family ...
    theme_palette: bool = True      # ... and its own palette: with both, the shots of a video share
                                    # only their object classes (docs/design-notes.md)
    cast: bool = True               # a video draws its objects once (a count in objects_per_shot, a
                                    # class and a size each) and every shot shows that cast at new
                                    # places, as the people of a video appear in its shots; False:
                                    # every shot draws its own
    cast_size_spread: float = 0.15  # with cast: sd of the log of an object's size from shot to shot
                                    # about its own (the camera's distance varies a little)
    min_cut_distance: float = 0.6   # a new shot is redrawn until the half-L1 colour-histogram
                                    # distance across the cut exceeds this (detector threshold 0.4)
    max_shot_distance: float = 0.16 # ...and until no two consecutive frames of it exceed this
    min_visible_area: float = 0.002 # objects with less visible area (fraction of the frame) get no
                                    # box: a detector would not see them either
    crf: int = 20                   # x264 constant rate factor: visually clean at 64 px
    preset: str = "ultrafast"       # x264 speed preset: coding is then a small part of the cost

    def __post_init__(self):
        for name, value in vars(self).items():     # nan passes every range check below, inf overflows
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                raise ValueError(f"{name}={value} is not a finite number")
        if self.size % 2 or self.size < 16:
            raise ValueError(f"size must be even and >= 16 (yuv420p), got {self.size}")
        if not 1 <= self.shots[0] <= self.shots[1]:
            raise ValueError(f"shots must be (min, max) with 1 <= min <= max, got {self.shots}")
        if self.palette_size < 3:
            raise ValueError(f"palette_size must be >= 3 (2 background colours + objects), got {self.palette_size}")
        if not 1 <= self.objects_per_shot[0] <= self.objects_per_shot[1]:
            raise ValueError(f"objects_per_shot must be (min, max) with min >= 1, got {self.objects_per_shot}")
        if not 0 <= self.tracking_share <= 1:
            raise ValueError(f"tracking_share must be in [0, 1], got {self.tracking_share}")
        if self.cast_size_spread < 0:
            raise ValueError(f"cast_size_spread must be >= 0, got {self.cast_size_spread}")
        if not 0 < self.object_radius[0] <= self.object_radius[1] <= 1:
            raise ValueError(f"object_radius must be (min, max) with 0 < min <= max <= 1, got {self.object_radius}")
        if self.videos < 1 or self.fps < 1 or self.seconds <= 0 or self.themes < 1:
            raise ValueError(f"videos, fps and themes must be at least 1 and seconds above 0, got "
                             f"videos={self.videos}, fps={self.fps}, seconds={self.seconds}, themes={self.themes}")
        if self.seconds * self.fps < 4:
            raise ValueError(f"a video of {self.seconds} s at {self.fps} fps has fewer than 4 frames")
        if self.objects_per_shot[1] > 5:
            raise ValueError(f"objects_per_shot allows at most 5 objects (the papers' boxes per frame), "
                             f"got {self.objects_per_shot}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be within 0..51 (x264), got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset {self.preset!r} is not an x264 preset; valid: {', '.join(X264_PRESETS)}")
        if not 1 <= self.classes_per_theme[0] <= self.classes_per_theme[1] <= len(CLASS_NAMES):
            raise ValueError(f"classes_per_theme must be (min, max) with 1 <= min <= max <= {len(CLASS_NAMES)}, "
                             f"got {self.classes_per_theme}")

    @property
    def frames_per_video(self) -> int:
        return max(1, round(self.seconds * self.fps))

    @property
    def min_shot_frames(self) -> int:
        return max(4, math.ceil(self.min_shot_seconds * self.fps))


# Fields that ``vivi synth`` and ``vivi demo`` set with options of their own, not through --world.
OWN_OPTIONS = ("videos", "seconds", "fps", "size", "seed")


def world_overrides(items: list[str], reserved: tuple[str, ...] = OWN_OPTIONS) -> dict:
    """``KEY=VALUE`` strings (``vivi synth/demo --world``) -> :class:`WorldConfig` keyword arguments.

    Values are YAML (``tracking=1``, ``shots=[1,1]``, ``object_textures=true``) and are checked
    against the field's type (:func:`vivi.registry.typed_value`: a float field takes any number, a
    pair takes two numbers; ``TypeError`` otherwise); an unknown or ``reserved`` key is refused
    (``ValueError``) with the valid ones named.
    """
    import yaml
    hints = typing.get_type_hints(WorldConfig)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--world {item!r}: expected KEY=VALUE, e.g. tracking=1")
        check_world_key(key, reserved)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--world {item!r}: {text!r} is not a value") from None
        out[key] = typed_value(value, hints[key], f"--world {key}")
    return out


def check_world_key(key: str, reserved: tuple[str, ...] = OWN_OPTIONS) -> None:
    """Raise ``ValueError`` naming the fix if ``key`` is not a :class:`WorldConfig` field one may set."""
    if key in reserved:
        raise ValueError(f"--world {key}: has its own option, `vivi synth --{key}` (`vivi demo` sets it from "
                         "its mode), not --world")
    if key not in WorldConfig.__dataclass_fields__:
        valid = ", ".join(k for k in WorldConfig.__dataclass_fields__ if k not in reserved)
        raise ValueError(f"--world {key}: not a world setting; valid: {valid}")


@dataclass(frozen=True)
class Theme:
    """What all shots of a video share."""
    classes: tuple[int, ...]        # object class ids that appear in the video
    palette: np.ndarray             # (palette_size, 3) RGB in [0, 1]
    background: int                 # background family id

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "class_names": [CLASS_NAMES[c] for c in self.classes],
                "palette": np.round(self.palette * 255).astype(int).tolist(),
                "background": BACKGROUND_FAMILIES[self.background]}


def sample_palette(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` distinct colours around a random base hue (analogous plus one complementary hue),
    with varied saturation and value, so palettes of different themes are told apart."""
    base = rng.uniform()
    while True:
        hues = (base + rng.choice([-0.08, 0.0, 0.08, 0.5], size) + rng.normal(0, 0.03, size)) % 1.0
        colors = np.array([colorsys.hsv_to_rgb(h, rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.95))
                           for h in hues], np.float32)
        gaps = np.linalg.norm(colors[:, None] - colors[None], axis=-1) + np.eye(size) * 9
        if gaps.min() > 0.25:       # no two palette colours alike
            return colors


def make_themes(config: WorldConfig) -> list[Theme]:
    rng = rng_for(config.seed, THEME_DOMAIN)
    themes = []
    for _ in range(config.themes):
        k = int(rng.integers(config.classes_per_theme[0], config.classes_per_theme[1] + 1))
        classes = tuple(sorted(int(c) for c in rng.choice(len(CLASS_NAMES), k, replace=False)))
        themes.append(Theme(classes=classes, palette=sample_palette(rng, config.palette_size),
                            background=int(rng.integers(len(BACKGROUND_FAMILIES)))))
    return themes


# ---- shots --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """Per-frame camera: the world point at the screen centre and the zoom (screen units per world
    unit). The screen spans [-1, 1] on both axes, y down."""
    center: np.ndarray              # (T, 2)
    zoom: np.ndarray                # (T,)


@dataclass(frozen=True)
class Lighting:
    """Per-frame lighting, multiplied onto the rendered colours:
    ``gain * tint * (1 + gradient . screen_xy)``."""
    gain: np.ndarray                # (T,) overall brightness
    tint: np.ndarray                # (3,) colour of the light
    gradient: np.ndarray            # (T, 2) brightness slope across the screen (a light direction)


@dataclass(frozen=True)
class ObjectTrack:
    """One object through a shot, per frame, in world coordinates."""
    object_id: int                  # unique within its video
    class_id: int
    center: np.ndarray              # (T, 2)
    radius: np.ndarray              # (T,) world units; the shape fits in a disc of this radius
    angle: np.ndarray               # (T,) rotation in radians
    stretch: np.ndarray             # (T, 2) anisotropic scale of the shape axes (deformation)
    shear: np.ndarray               # (T,) shear of the shape (deformation)
    colors: np.ndarray              # (2, 3) RGB in [0, 1]
    texture: int                    # 0 plain, 1 stripes, 2 two-tone, 3 rings (in object coordinates)
    texture_frequency: float        # cycles per unit object radius


@dataclass(frozen=True)
class Shot:
    """One camera set-up and everything that happens in it."""
    background: BackgroundInstance
    camera: Camera
    lighting: Lighting
    objects: list[ObjectTrack] = field(default_factory=list)   # back to front

    @property
    def num_frames(self) -> int:
        return len(self.camera.zoom)


def plan_shots(rng: np.random.Generator, config: WorldConfig) -> list[int]:
    """Shot lengths in frames: a random count in ``config.shots`` (fewer when the video is too
    short for them all to reach ``min_shot_frames``) and a random split of the rest."""
    total, shortest = config.frames_per_video, config.min_shot_frames
    most = max(1, min(config.shots[1], total // shortest))
    count = int(rng.integers(min(config.shots[0], most), most + 1))
    extra = total - count * shortest
    if extra < 0:                   # a video shorter than one shot: a single shot
        return [total]
    splits = np.sort(rng.integers(0, extra + 1, count - 1))
    return [shortest + int(n) for n in np.diff(np.concatenate([[0], splits, [extra]]))]


def _wobble(rng, times, amplitude, rate):
    """A smooth random oscillation: amplitude * sin(w t + phase) with w around ``rate`` rad/s."""
    return amplitude * np.sin(rng.uniform(0.6, 1.4) * rate * times + rng.uniform(0, 2 * np.pi))


def sample_lighting(rng, times, drift: float) -> Lighting:
    """Light of one shot: a random gain, tint and direction, then a slow brightness swing and a
    turning light direction (``drift`` scales both; 0 freezes them)."""
    gain = rng.uniform(0.65, 1.2) * (1 + _wobble(rng, times, rng.uniform(0.03, 0.08) * drift, 0.8))
    direction = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.25, 0.25) * drift * times
    strength = rng.uniform(0.15, 0.4)
    tint = np.exp(rng.normal(0, 0.1, 3))
    return Lighting(gain=gain.astype(np.float32), tint=(tint / tint.mean()).astype(np.float32),
                    gradient=(strength * np.stack([np.cos(direction), np.sin(direction)], 1)).astype(np.float32))


def sample_camera(rng, times, motion: float, tracking: float = 0.0) -> Camera:
    """Camera of one shot: a random place in the (infinite) background and a zoom, then a steady
    pan and a slow push in / pull out (``motion`` scales both; 0 freezes them).

    ``tracking`` > 0 makes it a tracking shot: the camera also travels at U(0.15, 0.3) x
    ``tracking`` x ``motion`` world units a second in a random direction (drawn last), and
    :func:`sample_shot` moves the objects with it, so that the background slides by behind them."""
    zoom0 = math.exp(rng.uniform(math.log(0.75), math.log(1.4)))
    # push in and pull out rather than zoom without end, so that long shots keep textures and
    # objects at sizes the frame can resolve
    push = _wobble(rng, times, rng.uniform(0.0, min(0.35, 0.1 * motion)), 0.5)
    zoom = zoom0 * np.exp(push - push[0])
    start = rng.uniform(-3, 3, 2)
    pan = rng.normal(0, 0.05 * motion, 2)
    if tracking > 0:
        heading = rng.uniform(0, 2 * np.pi)
        pan = pan + rng.uniform(0.15, 0.3) * tracking * motion * np.array([math.cos(heading), math.sin(heading)])
    center = start + pan * times[:, None]
    return Camera(center=center.astype(np.float32), zoom=zoom.astype(np.float32))


def sample_object(rng, object_id: int, class_id: int, colors: np.ndarray, camera: Camera, times,
                  motion: float, *, screen_center=None, screen_radius=None, angle=None,
                  deformation: float = 0.15, radius_range: tuple[float, float] = (0.16, 0.4),
                  textured: bool = True, spin_range: tuple[float, float] = (0.1, 0.8),
                  wander_range: tuple[float, float] = (0.1, 0.45)) -> ObjectTrack:
    """An object that wanders around a screen position of the shot's first frame.

    Position (an oscillation plus a drift), rotation (a steady spin), size and deformation
    (oscillations) change smoothly, so the object moves continuously, now and then partly leaves
    the frame, and often comes back. Keyword arguments pin the first frame's attributes (used by
    the downstream tasks, which draw one still frame); ``motion`` scales all the changes; an
    unpinned radius is log-uniform in ``radius_range`` (screen units); ``textured=False`` paints it plain;
    ``spin_range`` (rad/s) and ``wander_range`` (screen units) bound how fast it turns and how far it
    wanders.
    """
    if screen_center is None:
        screen_center = rng.uniform(-0.75, 0.75, 2)
    if screen_radius is None:
        screen_radius = math.exp(rng.uniform(math.log(radius_range[0]), math.log(radius_range[1])))
    zoom0 = float(camera.zoom[0])
    center0 = camera.center[0] + np.asarray(screen_center) / zoom0
    wander = np.stack([_wobble(rng, times, rng.uniform(*wander_range) * motion / zoom0, 1.0)
                       for _ in range(2)], axis=1)
    drift = rng.normal(0, 0.04 * motion / zoom0, 2) * times[:, None]
    center = center0 + wander - wander[:1] + drift          # the first frame sits at screen_center
    size = 1 + _wobble(rng, times, 0.12 * min(motion, 2.0), 1.2)
    radius = screen_radius / zoom0 * size / size[0]
    if angle is None:
        angle = rng.uniform(0, 2 * np.pi)
    spin = rng.choice([-1, 1]) * rng.uniform(*spin_range) * motion
    angles = angle + spin * times
    squash = _wobble(rng, times, rng.uniform(0, deformation), 2.0)
    stretch = np.stack([1 + squash, 1 - squash], axis=1)
    shear = _wobble(rng, times, rng.uniform(0, deformation), 1.6)
    return ObjectTrack(
        object_id=object_id, class_id=int(class_id), center=center.astype(np.float32),
        radius=radius.astype(np.float32), angle=angles.astype(np.float32),
        stretch=stretch.astype(np.float32), shear=shear.astype(np.float32),
        colors=np.asarray(colors, np.float32), texture=int(rng.integers(4)) * textured,   # always drawn: same stream
        texture_frequency=float(rng.uniform(1.0, 2.5)))


@dataclass(frozen=True)
class CastMember:
    """An object that appears in every shot of its video (``WorldConfig.cast``)."""
    class_id: int
    radius: float                   # its usual size on screen (screen units), in the first frame of a shot


def sample_cast(rng: np.random.Generator, theme: Theme, config: WorldConfig) -> list[CastMember]:
    """A video's cast: a count in ``objects_per_shot``, then a class of the theme (with repeats) and
    a log-uniform size in ``object_radius`` for each member."""
    count = int(rng.integers(config.objects_per_shot[0], config.objects_per_shot[1] + 1))
    return [CastMember(int(rng.choice(theme.classes)),
                       math.exp(rng.uniform(math.log(config.object_radius[0]), math.log(config.object_radius[1]))))
            for _ in range(count)]


def sample_shot(rng: np.random.Generator, theme: Theme, config: WorldConfig, num_frames: int,
                first_object_id: int = 0, cast: list[CastMember] | None = None) -> Shot:
    """A random camera set-up of ``theme`` with objects moving for ``num_frames`` frames.

    The background takes two palette colours and the objects the others, so objects stand out;
    the object classes come from the theme, with repeats (several objects of one class in a shot
    are positives for the object-level loss). With a ``cast`` (:func:`sample_cast`) the shot shows
    exactly its members, each at its own size times a log-normal factor (sd ``cast_size_spread``),
    at new places and in new colours of the palette.
    """
    times = np.arange(num_frames, dtype=np.float64) / config.fps
    # a shot's own palette or background family only where the world asks for it (only then: same stream)
    palette = theme.palette if config.theme_palette else sample_palette(rng, config.palette_size)
    family = theme.background if config.theme_background else int(rng.integers(len(BACKGROUND_FAMILIES)))
    order = rng.permutation(len(palette))
    background_colors, object_colors = palette[order[:2]], palette[order[2:]]
    background = sample_background(rng, family, background_colors, config.background_warp)
    tracking = config.tracking      # a share below 1 draws which shots track (only then: same stream)
    if tracking > 0 and config.tracking_share < 1 and rng.random() >= config.tracking_share:
        tracking = 0.0
    camera = sample_camera(rng, times, config.motion, tracking)
    lighting = sample_lighting(rng, times, config.lighting_drift)
    # the shot's own objects (a count drawn only without a cast: same stream), or the video's cast
    count = (int(rng.integers(config.objects_per_shot[0], config.objects_per_shot[1] + 1)) if cast is None
             else len(cast))
    objects = []
    for i in range(count):
        colors = object_colors[rng.integers(len(object_colors), size=2)]
        if cast is None:
            class_id, radius = rng.choice(theme.classes), None      # a radius drawn in object_radius
        else:
            spread = math.exp(rng.normal(0, config.cast_size_spread))
            class_id, radius = cast[i].class_id, min(cast[i].radius * spread, 1.0)
        objects.append(sample_object(rng, first_object_id + i, class_id, colors, camera, times, config.motion,
                                     screen_radius=radius, radius_range=config.object_radius,
                                     textured=config.object_textures, spin_range=config.object_spin,
                                     wander_range=config.object_wander))
    if tracking > 0:                # the objects travel with the camera; the background slides by
        travel = camera.center - camera.center[:1]
        objects = [replace(o, center=o.center + travel) for o in objects]
    return Shot(background=background, camera=camera, lighting=lighting, objects=objects)
