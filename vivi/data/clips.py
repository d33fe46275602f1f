"""Batches in the papers' geometry: N videos x K consecutive shots x F consecutive frames.

VIVI §3.1 and §4 ("Architectures and training details"), Object-centric §4.1; docs/reference.md,
"The hierarchy and batch geometry": each batch element is a video; from it K consecutive shots
are taken (videos with fewer shots are skipped), and from each shot F consecutive frames (sampled
at 1 Hz by ingest). The baselines use the same reader:

* ``mode="shots"``: the default, K x F frames as above (Ex-YT-S is K = 1, VIVI is K = 2 or 4);
* ``mode="frame"``: Ex-YT-F / Rot-YT-F, one frame of the video repeated F times (its copies become
  different exemplars only through augmentation; no temporal signal). With ``frame_choice="fixed"``
  (the default) it is the same frame at every draw: the papers' "YT8M frames", "a data set obtained
  by sampling one frame from each video in our training set" (VIVI §4), chosen per video by the
  loader's seed; ``"each_draw"`` takes a new random frame at every draw, so the baseline sees
  every frame of the videos (more data than the papers' baseline, still no temporal signal;
  docs/design-notes.md).

A shot with fewer than F sampled frames gives its frames in order, each repeated about F/n times
(index ``floor(j * n / F)`` for j < F), so order inside a shot is kept and no frame of another
shot leaks in.

Frames keep their aspect ratio. A training loader is given the augmentation's crop rules
(``crop=``, an :class:`~vivi.train.augment.AugmentConfig`): every frame of a clip takes its own
crop, drawn on the *whole* frame (VIVI §4 and app. A, "the augmentation mechanism from" GoogLeNet;
Object-centric §4.1: "random cropping ... The coordinates of object bounding boxes are
recalculated accordingly"), resized to S x S here in the worker, its boxes mapped into it
(:func:`~vivi.data.images.take_crops`); so videos of any aspect ratio batch, and the device only
flips and distorts colour (docs/reference.md, "Augmentation"). Without ``crop`` (evaluation,
inspection) frames are resized and centre-cropped to ``size`` x ``size`` as a batch needs one
shape.

Determinism: the :class:`VideoSampler` yields ``(video, draw)`` pairs, where ``draw`` is the
position in the global sample stream; every random choice for that sample (shots, frames, crops)
comes from generators seeded with ``(seed, draw)``. The batches are therefore the same for any number
of DataLoader workers, and a resumed run continues the stream where it stopped.

This loader reads any frame of any video by its offset: random access, which a local folder
answers fastest (a dataset in object storage, one ranged request per frame). Training reads a
dataset in object storage with ``vivi.data.stream`` instead: whole shards, in order.
"""
from __future__ import annotations

import functools
import math
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from ..ingest.decode import decode_jpeg
from .boxes import load_detections
from .images import crop_generator, fit_short_side, fit_square, take_crops
from .reader import Video, VideoDataset, VideoList, require_complete

MODES = ("shots", "frame")
FRAME_CHOICES = ("fixed", "each_draw")
_FIXED_FRAME_STREAM = 0x46524D   # a third seed word: the fixed frames' stream is apart from every draw's


@dataclass
class ClipConfig:
    """What one clip of a video holds. Training's ``DataConfig`` extends it with the batch and the
    workers, so a run's ``data`` section is passed to :func:`make_loader` as it is."""
    shots: int = 4                 # K: consecutive shots per video (VIVI: 2 or 4; Ex-YT-S / Rot: 1)
    frames: int = 8                # F: consecutive frames per shot (exemplar 8, rotation 4; VIVI §4)
    mode: str = "shots"            # "shots" (K x F frames) or "frame" (Ex-YT-F / Rot-YT-F: one frame, F copies)
    frame_choice: str = "fixed"    # mode "frame": "fixed" = one frame per video for the whole run (the papers'
                                   # "YT8M frames" data set, VIVI §4), "each_draw" = a new random frame each draw
    size: int | None = None        # frames' shorter side is resized to size (None: as stored); without the
                                   # loader's crop they are also centre-cropped to size x size, so videos of any
                                   # aspect batch (with None all must share one size)
    detector: str | None = None    # read boxes from the detections of this detector (DATA/detections/NAME);
                                   # needed by the object loss
    max_boxes: int = 5             # boxes kept per frame (Object-centric §4.1: at most 5)
    allow_incomplete: bool = False  # train on the complete shards of a dataset some of whose planned shards
                                   # are missing or damaged (refused by default, naming them)
    max_damaged_frames: int = 100  # frames that are not decodable JPEG images are replaced by a neighbour in
                                   # their shot and counted; a run that meets more stops

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown clip mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.frame_choice not in FRAME_CHOICES:
            raise ValueError(f"unknown frame choice {self.frame_choice!r}; valid: {', '.join(FRAME_CHOICES)}")
        if self.shots < 1 or self.frames < 1:
            raise ValueError(f"need at least one shot and one frame per clip, got K={self.shots}, F={self.frames}")
        if self.max_damaged_frames < 0:
            raise ValueError(f"data.max_damaged_frames must be at least 0, got {self.max_damaged_frames}")


class VideoClipDataset(Dataset):
    """Map-style dataset over the videos with at least K shots; item ``(video, draw)`` -> a clip.

    A clip is a dict of tensors:

    * ``frames``: uint8 (K, F, 3, H, W), RGB;
    * ``video``: int64 (), index of the video in :attr:`videos` (stable across processes);
    * ``shots``: int64 (K,), shot indices in the video; ``frame_index``: int64 (K, F), sampled
      frame indices in the video;
    * with a detector: ``boxes`` float32 (K, F, B, 4) as normalised (x0, y0, x1, y1) in the
      returned frame, ``box_labels`` int64 (K, F, B) with -1 for padding, ``box_scores`` float32.
    """

    def __init__(self, root: str | Path, config: ClipConfig = ClipConfig(), crop=None):
        self.config = config
        self.crop = crop           # AugmentConfig whose crop every frame takes (see the module docstring)
        self.dataset = VideoDataset(root)
        table = self.dataset.index
        need = config.shots if config.mode == "shots" else 1
        # A clip's K shots are consecutive shots that each have a stored frame (a damaged stretch of
        # a video can leave a shot without one): a video takes part when it has such a run of K.
        # ``videos`` are those videos, made into objects only when drawn.
        self.rows = np.flatnonzero(np.asarray(table.video_run) >= need)
        self.videos = VideoList(table, self.rows)
        if not len(table):
            if table.shards:
                raise ValueError(f"no video of {root} could be ingested (the reasons are in "
                                 f"{Path(root) / 'failures.jsonl'})")
            raise ValueError(f"{root} holds no complete shard (shards/*.tar missing, damaged or not yet written): "
                             "run `vivi ingest` again with the same inputs and --out to write them")
        if not len(self.rows):
            counts = np.unique(table.num_shots()).tolist()
            raise ValueError(f"no video in {root} has {need} shots (videos: {len(table)}, "
                             f"shot counts seen: {counts or 'none'}); lower the number of shots per clip "
                             "or ingest longer, multi-shot videos")
        if config.size is None and crop is None and \
                len(np.unique(np.asarray(table.video_frame_size)[self.rows], axis=0)) > 1:
            raise ValueError("videos of different frame sizes need ClipConfig.size to batch them")
        self.detections = load_detections(root, config.detector, table) if config.detector else None
        if self.detections is not None:
            require_covered(self.detections.covered, self.rows, config.detector, root, table.key)

    def __len__(self) -> int:
        return len(self.videos)

    def choose(self, video: Video, rng: np.random.Generator, windows: list[int] | None = None
               ) -> tuple[list[int], list[list[int]]]:
        """The shots and, for each, the frame indices of one clip of ``video`` (:func:`choose_clip`)."""
        return choose_clip(video, self.config, rng, self.seed, windows)

    def fixed_frame(self, video: Video) -> int:
        """The one frame of ``video`` in the papers' frame data set (:func:`fixed_frame`)."""
        return fixed_frame(video, self.seed)

    def windows(self, index: int) -> list[int]:
        """The shots a clip of video ``index`` may start at (``mode="shots"``)."""
        return _windows(self.videos[index].shot_frames(), self.config.shots)

    def clip(self, index: int, draw: int) -> tuple[Video, list[int], list[list[int]]]:
        """The video, shots and frame indices of sample ``(index, draw)``: its random choices, no pixels."""
        video = self.videos[index]
        return (video, *self.choose(video, np.random.default_rng([self.seed, draw])))

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = item
        video, shots, frames = self.clip(index, draw)
        clip, crop = clip_tensors(functools.partial(self.dataset.read_jpeg, video), shots, frames, index,
                                  self.config.size, functools.partial(frame_name, video), self.crop,
                                  [self.seed, draw])
        if self.detections is not None:
            clip.update(self.detections.boxes(int(self.rows[index]), frames, crop, self.config.max_boxes))
        return clip

    @property
    def num_videos(self) -> int:
        """The eligible videos (those with a run of K shots with frames)."""
        return len(self.videos)

    @property
    def num_boxes(self) -> int | None:
        """Boxes of the detector over the whole dataset (None without a detector)."""
        return None if self.detections is None else len(self.detections.all_boxes)

    seed: int = 0   # set by the loader; part of every sample's random stream


def choose_clip(video: Video, config: ClipConfig, rng: np.random.Generator, seed: int,
                windows: list[int] | None = None) -> tuple[list[int], list[list[int]]]:
    """The shots and, for each, the frame indices of one clip of ``video``, drawn from ``rng``
    (``seed``: the loader's, for the fixed frame of ``mode="frame"``; ``windows``: the possible
    first shots, default the first shot of every run of K shots with frames)."""
    K, F = config.shots, config.frames
    if config.mode == "frame":
        frame = fixed_frame(video, seed) if config.frame_choice == "fixed" else int(rng.integers(video.num_frames))
        return [video.frame_shot[frame]] * K, [[frame] * F for _ in range(K)]
    per_shot = video.shot_frames()
    if windows is None:
        windows = _windows(per_shot, K)
    first = windows[int(rng.integers(len(windows)))]
    shots = list(range(first, first + K))
    frames = []
    for shot in shots:
        available = per_shot[shot]
        n = len(available)
        if n >= F:
            start = int(rng.integers(n - F + 1))
            frames.append(available[start:start + F])
        else:
            frames.append([available[j * n // F] for j in range(F)])
    return shots, frames


def fixed_frame(video: Video, seed: int) -> int:
    """The one frame of ``video`` in the papers' frame data set: drawn from the loader's seed and the
    video's key (not its position), so every rank, worker and stream, and a resumed run, agree."""
    rng = np.random.default_rng([seed, zlib.crc32(video.key.encode()), _FIXED_FRAME_STREAM])
    return int(rng.integers(video.num_frames))


class DamagedFrame(ValueError):
    """A stored frame that is not a decodable JPEG image (named by shard, video and frame)."""


def clip_tensors(read_jpeg: Callable[[int], bytes], shots: list[int], frames: list[list[int]], index: int,
                 size: int | None, where: Callable[[int], str] | None = None, crop=None,
                 seed: list[int] | None = None) -> tuple[dict[str, torch.Tensor], tuple | np.ndarray]:
    """A clip's tensors (``frames``, ``video`` = ``index``, ``shots``, ``frame_index``, ``damaged``;
    see :class:`VideoClipDataset`) from the JPEG bytes of its frames (``read_jpeg(frame)``), each
    decoded once (shorter side resized to ``size``), and the crops of the frames (normalised x0,
    y0, x1, y1) that their boxes follow. With ``crop`` (an AugmentConfig) each of the K x F
    places takes its own crop of the whole frame, drawn by :func:`crop_generator` of ``seed``,
    resized to S x S (:func:`take_crops`); the crops are then a (K, F, 4) array. Without, frames
    are centre-cropped to ``size`` x ``size`` (:func:`fit_square`), or kept as stored for None,
    and the crop is one tuple.

    A frame that does not decode is replaced by the nearest frame of the clip in the same shot that
    does (a positive of the same exemplar, so the losses stay well defined), else by the clip's
    nearest decodable frame; ``damaged`` counts the replaced frames and each is reported once per
    process on stderr (``where(frame)`` names it). A clip without one decodable frame raises
    :class:`DamagedFrame`.
    """
    decoded: dict[int, np.ndarray] = {}
    damaged: list[int] = []
    square = (0.0, 0.0, 1.0, 1.0)
    for frame in sorted({f for shot in frames for f in shot}):
        try:
            image = decode_jpeg(read_jpeg(frame))
        except ValueError:
            damaged.append(frame)
            continue
        if size is not None and crop is not None:
            image = fit_short_side(image, size)
        elif size is not None:
            image, square = fit_square(image, size)
        decoded[frame] = image
    named = where or (lambda frame: f"frame {frame} of video {index}")
    for frame in damaged:
        _report_damaged(named(frame))
    if not decoded:
        raise DamagedFrame(f"{named(damaged[0])} is not a decodable JPEG image, nor is any other frame of its clip: "
                           "`vivi inspect DATA --verify` lists the damaged frames, `vivi ingest ... --repair` "
                           "rewrites their shards")
    for frame in damaged:
        shot = next(s for s in frames if frame in s)
        nearby = [f for f in shot if f in decoded] or list(decoded)
        decoded[frame] = decoded[min(nearby, key=lambda f: (abs(f - frame), f))]
    K, F = len(frames), len(frames[0])
    if crop is not None:
        stack, rects = take_crops([decoded[f] for shot in frames for f in shot], crop, crop_generator(seed or [0]))
        stack, square = stack.reshape(K, F, *stack.shape[1:]), rects.reshape(K, F, 4)
    else:
        stack = np.stack([[decoded[f] for f in shot] for shot in frames])          # K, F, H, W, 3
    return {"frames": torch.from_numpy(stack).permute(0, 1, 4, 2, 3).contiguous(), "video": torch.tensor(index),
            "shots": torch.tensor(shots), "frame_index": torch.tensor(frames),
            "damaged": torch.tensor(len(damaged))}, square


_reported: set[str] = set()


def _report_damaged(what: str) -> None:
    if what not in _reported:
        _reported.add(what)
        print(f"vivi: {what} is not a decodable JPEG image; training uses a neighbouring frame of its shot "
              "instead (`vivi inspect DATA --verify` lists every damaged frame, `vivi ingest ... --repair` "
              "rewrites their shards)", file=sys.stderr, flush=True)


def frame_name(video: Video, frame: int) -> str:
    """How a frame is named to a user: its shard, video and place."""
    return f"frame {frame} (at {video.frame_times_s[frame]:.1f} s) of video {video.key} in {video.shard}"


def require_covered(covered: np.ndarray, rows: np.ndarray, detector: str, root: str | Path,
                    key: Callable[[int], str]) -> None:
    """Raise when the detections ``detector`` miss some of the videos ``rows`` (``covered``: per
    video of the dataset; ``key(row)``: a video's key, to name the first one missing)."""
    missing = rows[~covered[rows]]
    if len(missing):
        raise ValueError(f"the detections {detector!r} of {root} cover {len(rows) - len(missing)} of its "
                         f"{len(rows)} videos (first missing: {key(int(missing[0]))}): a `vivi detect` that stopped "
                         f"early, or shards ingested after it; run `vivi detect {root} --detector ...` again with "
                         "the same detector to finish them")


def _windows(per_shot: list[list[int]], k: int) -> list[int]:
    """The first shot of every run of ``k`` consecutive shots that each have a sampled frame."""
    has = [len(frames) > 0 for frames in per_shot]
    return [first for first in range(len(per_shot) - k + 1) if all(has[first:first + k])]


class VideoSampler(Sampler):
    """Yields ``(video, draw)`` for one rank: a seeded, epoch-wise shuffled stream of videos.

    The global stream is epoch 0's permutation of all videos, then epoch 1's, and so on; rank r
    of W takes the positions p with p % W == r, so ranks never share a position and, within an
    epoch, never a video. ``infinite=False`` stops after one epoch (every video exactly once over
    all ranks and workers); ``start`` skips the first ``start`` samples of this rank (resume).
    """

    def __init__(self, num_videos: int, *, seed: int = 0, shuffle: bool = True, infinite: bool = True,
                 rank: int | None = None, world_size: int | None = None, start: int = 0):
        if rank is None or world_size is None:
            initialized = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialized else 0
            world_size = dist.get_world_size() if initialized else 1
        self.num_videos, self.seed, self.shuffle, self.infinite = num_videos, seed, shuffle, infinite
        self.rank, self.world_size, self.start = rank, world_size, start

    def _epoch(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_videos)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_videos)

    def __iter__(self):
        position = self.rank + self.start * self.world_size
        order, order_epoch = None, -1
        while self.infinite or position < self.num_videos:
            epoch = position // self.num_videos
            if epoch != order_epoch:
                order, order_epoch = self._epoch(epoch), epoch
            yield int(order[position % self.num_videos]), position
            position += self.world_size

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite VideoSampler has no length")
        return max(0, math.ceil((self.num_videos - self.rank) / self.world_size) - self.start)


def make_loader(root: str | Path, config: ClipConfig, *, batch_size: int, seed: int = 0, workers: int = 2,
                infinite: bool = True, shuffle: bool = True, start_batch: int = 0, rank: int | None = None,
                world_size: int | None = None, drop_last: bool | None = None, crop=None) -> DataLoader:
    """A DataLoader of clip batches for this rank (``batch_size`` videos per rank and step).

    ``start_batch`` skips that many batches of this rank's stream (to resume training exactly).
    ``crop``: the AugmentConfig whose crop every frame takes in the workers (training; frames
    come out S x S), None for frames centre-cropped to ``config.size`` (see the module docstring).
    """
    dataset = VideoClipDataset(root, config, crop)
    if not config.allow_incomplete:
        require_complete(root, dataset.dataset.index.shards)
    dataset.seed = seed
    sampler = VideoSampler(len(dataset), seed=seed, shuffle=shuffle, infinite=infinite, rank=rank,
                           world_size=world_size, start=start_batch * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=infinite if drop_last is None else drop_last,
                      persistent_workers=workers > 0 and infinite, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers > 0 else None)


def iterate_videos(root: str | Path, config: ClipConfig, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Every eligible video once, in order, each as one clip (for evaluation and inspection)."""
    dataset = VideoClipDataset(root, config)
    dataset.seed = seed
    return (dataset[(i, i)] for i in range(len(dataset)))
