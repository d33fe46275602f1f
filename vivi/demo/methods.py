"""What the demo compares, and at which scale: the methods of the papers' tables and the three
demo sizes (``--quick``, default, ``--full``).

The methods are the rows of VIVI Table 4 and Object-centric Table 1 that matter for the claim the
demo checks (VIVI §5.1, Fig. 2: shot- and video-level invariances beat frame-level self-supervision;
Object-centric §5.1: the object loss adds to VIVI), as tiny CPU presets of ``vivi/train/presets``.
"""
from __future__ import annotations

from dataclasses import dataclass

RANDOM_ENCODER = "resnet_tiny_v2"      # the encoder every tiny preset trains, and the random baseline


@dataclass(frozen=True)
class Method:
    name: str                       # folder name under runs/ and evals/
    label: str                      # the paper's name for it
    preset: str | None              # training preset; None: the random-init encoder (nothing to train)
    overrides: tuple[str, ...] = ()  # ``section.field=value`` on top of the preset

    @property
    def trained(self) -> bool:
        return self.preset is not None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("random", "random init", None),
    Method("ex-yt-f", "Ex-YT-F", "tiny-ex-yt-f"),
    Method("ex-yt-s", "Ex-YT-S", "tiny-ex-yt-s"),
    Method("vivi-ex4", "VIVI-Ex(4)", "tiny-vivi-ex4"),
    Method("vivi-ex4-obj", "VIVI-Ex(4) + objects", "tiny-vivi-ex4-obj"),
    # rotation variants (--rotation)
    Method("rot-yt-f", "Rot-YT-F", "tiny-rot-yt-f"),
    Method("vivi-rot4", "VIVI-Rot(4)", "tiny-vivi-rot4"),
)}
EXEMPLAR_METHODS = ("random", "ex-yt-f", "ex-yt-s", "vivi-ex4", "vivi-ex4-obj")
ROTATION_METHODS = ("rot-yt-f", "vivi-rot4")

# The ordering the papers report, worst to best (VIVI §5.1, Fig. 2; Object-centric Table 1). The
# demo tests each neighbouring pair; ">=" pairs (objects over VIVI) only need "not worse".
CLAIMED_ORDER = ("random", "ex-yt-f", "ex-yt-s", "vivi-ex4", "vivi-ex4-obj")
AT_LEAST_PAIRS = {("vivi-ex4", "vivi-ex4-obj")}


@dataclass(frozen=True)
class Scale:
    """One demo size."""
    videos: int                     # videos in the synthetic world
    seconds: float                  # length of each
    steps: int                      # training steps of every method
    seeds: int                      # pre-training seeds per method (spread and significance need >= 2)
    test_size: int                  # test images per downstream task
    eval_resolution: int = 64       # linear probe input size (the world's frame size)

    def train_overrides(self, seed: int) -> list[str]:
        """Steps, a step schedule scaled to them, the seed, and checkpoints for resuming."""
        s = self.steps
        return [f"optim.steps={s}", f"optim.decay_steps=[{round(0.75 * s)},{round(0.9 * s)}]",
                f"optim.warmup_steps={min(20, max(1, s // 10))}", f"run.seed={seed}",
                f"run.ckpt_every={max(10, s // 4)}", "run.keep_checkpoints=1", "data.workers=0"]


SCALES: dict[str, Scale] = {
    # a first look at every stage: at 300 steps no method has learned anything yet
    "quick": Scale(videos=48, seconds=20.0, steps=300, seeds=1, test_size=500),
    # what fits in 15 minutes on a 2-core CPU
    "default": Scale(videos=200, seconds=20.0, steps=3000, seeds=1, test_size=1000),
    # the frame level's task is the easiest and is learnt first, so the shot and video levels need
    # the longer run to show; the last three steps of the ordering are 1.6-3.4 points, which takes
    # five seeds to tell from the spread between seeds (docs/design-notes.md)
    "full": Scale(videos=200, seconds=20.0, steps=8000, seeds=5, test_size=2000),
}


def select_methods(names: list[str] | None = None, rotation: bool = False) -> list[Method]:
    """The methods to run: ``names`` (validated) or the exemplar ones, plus rotation on request.
    The random baseline always comes first: every comparison is against it."""
    chosen = list(names) if names else list(EXEMPLAR_METHODS)
    if rotation:
        chosen += [n for n in ROTATION_METHODS if n not in chosen]
    unknown = [n for n in chosen if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; valid: {', '.join(METHODS)}")
    if "random" not in chosen:
        chosen.insert(0, "random")
    chosen.remove("random")
    return [METHODS["random"]] + [METHODS[n] for n in dict.fromkeys(chosen)]
