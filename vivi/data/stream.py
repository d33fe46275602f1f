"""Clips streamed from whole shards read in order: training from object storage.

The clip dataset of ``vivi.data.clips`` reads any frame at its offset, which needs a file system
that answers small random reads quickly. An object store (S3, GCS, HTTP) answers large sequential
reads well and small ones slowly, so :class:`VideoStream` reads each shard once, whole and in
order (WebDataset's way), keeps the one clip of each video it needs and mixes the videos of
consecutive shards in a shuffle buffer. It reads a dataset at any fsspec URL (``vivi.storage``)
or in a local folder, with the same batches from both.

**Streams.** Each DataLoader worker of each rank runs one stream: S = world size x max(1,
workers) streams. In epoch e the shards that hold eligible videos are permuted by a generator
seeded with (seed, e), and stream s reads those at positions p with p mod S = s: within an epoch
no two streams share a shard, and every eligible video enters exactly one stream once. Streams go
through their epochs independently.

**Clips.** A video's clip (which K shots, which F frames) is chosen when the video enters its
stream, by a generator seeded with (seed, e, video key), under the clip dataset's rules
(:func:`~vivi.data.clips.choose_clip`: the same eligible videos, consecutive shots with frames,
frame mode). Only the clip's JPEG bytes and boxes are kept. With ``crop`` every frame takes its
own crop of the whole frame when the clip is decoded, as in :mod:`vivi.data.clips`, drawn from
(seed, e, video key) too.

**Shuffle buffer.** A stream holds ``buffer`` videos; once it is full, each entering video takes
the place of a buffered one, drawn by the stream's own generator (seeded with (seed, s)), which is
decoded and yielded. Each worker batches its own stream and the DataLoader takes the workers'
batches in turn: batch b of a rank comes from stream rank x W + (b mod W).

**Resume.** Which videos enter a stream, in which order, and which buffered video each replaces
follow from the dataset's index and the generators alone. A stream that must skip the samples it
gave before a resumed step replays those decisions without reading a tar, reads again only the
shards whose videos are still in its buffer, and continues: for the same world size and worker
count, the batches after the step are those of a run that never stopped.
"""
from __future__ import annotations

import functools
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..ingest.columns import read_columns
from ..ingest.index import INDEX_FILE, Video, open_index
from ..ingest.shards import require_dataset, shared_tmp_name
from ..storage import (
    StorageError,
    filesystem,
    is_url,
    join,
    location,
    missing_bucket,
    read_bytes,
    read_optional,
    write_bytes,
)
from .boxes import DETECTIONS_DIR, Detections, available_detectors, parse_detections
from .clips import ClipConfig, choose_clip, clip_tensors, frame_name, require_covered
from .reader import require_complete

__all__ = ["CHUNK_BYTES", "StreamLoader", "VideoStream", "make_stream_loader", "read_sequentially"]

CHUNK_BYTES = 8 << 20       # one ranged request of a tar: long enough that its latency is small beside its transfer
_DRAW_BLOCK = 1024          # buffer slots are drawn in blocks of this many, and replayed in the same blocks
_BUFFER_STREAM = 0x425546   # a third seed word: the buffer's generator is apart from the epochs' and the clips'


@dataclass
class _Clip:
    """One video's clip as a stream holds it: its choices, its frames' JPEG bytes and boxes."""
    video: int                                  # position among the eligible videos
    epoch: int                                  # the epoch it entered in (which chose the clip)
    shots: list[int]
    frames: list[list[int]]
    members: dict[int, tuple[int, int]]         # frame -> (offset, size) of its JPEG in the tar
    boxes: dict[int, np.ndarray] | None         # frame -> (n, 6) boxes, highest score first
    source: Video                               # the video, to name a damaged frame
    seed: list[int]                             # seed words of its crops
    jpegs: dict[int, bytes] | None = None


class _ClipBoxes(Detections):
    """The boxes of one clip's frames, mapped into the crop by :meth:`Detections.boxes`."""

    def __init__(self, per_frame: dict[int, np.ndarray]):
        self.per_frame = per_frame          # instead of the columns of a whole dataset

    def frame_boxes_of(self, row: int, frame: int) -> np.ndarray:
        return self.per_frame[frame]


class _SlotDraws:
    """The buffer slots that entering videos replace, drawn from the stream's generator in blocks
    (a block of draws differs from as many single draws, so the replay takes the same blocks)."""

    def __init__(self, seed: int, stream: int, slots: int):
        self.rng = np.random.default_rng([seed, stream, _BUFFER_STREAM])
        self.slots = slots
        self.block, self.used = np.empty(0, np.int64), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.used == len(self.block):
                self.block, self.used = self.rng.integers(self.slots, size=_DRAW_BLOCK), 0
            k = min(n, len(self.block) - self.used)
            parts.append(self.block[self.used:self.used + k])
            self.used, n = self.used + k, n - k
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


class VideoStream(IterableDataset):
    """The clips of the dataset at ``root`` (a URL or a local folder) for this rank, streamed from
    whole shards (see the module docstring); items are the clip dicts of
    :class:`~vivi.data.clips.VideoClipDataset`, ``video`` the position among the eligible videos.

    ``workers`` must be the DataLoader's ``num_workers`` (it sets the number of streams),
    ``batch_size`` and ``start_batch`` its batches and where this run starts in them (a resumed
    run skips the samples of the batches before). ``infinite=False`` gives one epoch (every
    eligible video once over all streams), the buffer emptied at its end. ``cache``: a folder
    that keeps the shards read (their tars and indices), so a later epoch or run reads them there.
    ``crop``: the AugmentConfig whose crop every frame takes (as :func:`~vivi.data.clips.make_loader`).
    """

    def __init__(self, root: str | Path, config: ClipConfig = ClipConfig(), *, seed: int = 0, buffer: int = 256,
                 cache: str | Path | None = None, batch_size: int = 1, workers: int = 0, start_batch: int = 0,
                 rank: int | None = None, world_size: int | None = None, infinite: bool = True, crop=None):
        if rank is None or world_size is None:
            initialized = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialized else 0
            world_size = dist.get_world_size() if initialized else 1
        if buffer < 1:
            raise ValueError(f"the shuffle buffer needs at least one video, got buffer={buffer}")
        if start_batch and not infinite:
            raise ValueError("start_batch resumes an infinite stream; a one-epoch stream starts at its beginning")
        self.root = location(root)
        self.config, self.seed, self.buffer, self.infinite = config, seed, buffer, infinite
        self.crop = crop
        self.cache = Path(cache) if cache is not None else None
        self.batch_size, self.start_batch, self.rank = batch_size, start_batch, rank
        self.lanes = max(1, workers)
        self.num_streams = world_size * self.lanes

        self.shards, video_shard, video_run, frame_size = _read_index(self.root,
                                                                      sizes=config.size is None and crop is None)
        need = config.shots if config.mode == "shots" else 1
        self.rows = np.flatnonzero(video_run >= need)          # the eligible videos, as in VideoClipDataset
        if not len(video_run):
            raise ValueError(f"{self.root} holds no video in its complete shards: ingest videos into it first")
        if not len(self.rows):
            runs = np.unique(video_run).tolist()
            raise ValueError(f"no video in {self.root} has {need} consecutive shots with frames (videos: "
                             f"{len(video_run)}, longest runs seen: {runs}); lower the number of shots per clip "
                             "or ingest longer, multi-shot videos")
        if frame_size is not None and len(np.unique(frame_size[self.rows], axis=0)) > 1:
            raise ValueError("videos of different frame sizes need ClipConfig.size to batch them")
        numbers = np.arange(len(self.shards))
        self.row_start = np.searchsorted(video_shard, numbers)          # first row of each shard in the index
        self.row_count = np.searchsorted(video_shard, numbers, side="right") - self.row_start
        eligible_shard = video_shard[self.rows]
        self.first = np.searchsorted(eligible_shard, numbers)          # each shard's eligible videos: positions
        self.last = np.searchsorted(eligible_shard, numbers, side="right")   # first .. last - 1 among them
        self.active = np.flatnonzero(self.last > self.first)
        if len(self.active) < self.num_streams:
            raise ValueError(f"{self.root} has {len(self.active)} shards with videos of {need} shots, fewer than "
                             f"the {self.num_streams} streams ({world_size} ranks x {self.lanes} DataLoader "
                             "workers) that would each read their own: use fewer workers (data.workers), or "
                             "ingest with fewer videos per shard")
        self.num_boxes: int | None = None       # boxes of the detector in the whole dataset, when its index says
        if config.detector:
            self._check_detections(video_shard)

    @property
    def num_videos(self) -> int:
        """The eligible videos (those with a run of K shots with frames)."""
        return len(self.rows)

    def shards_of(self, stream: int, epoch: int) -> np.ndarray:
        """The shards (numbers in the index's shard list) that stream ``stream`` reads in ``epoch``, in order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.active))
        return self.active[order[stream::self.num_streams]]

    def _epoch_videos(self, shards: np.ndarray) -> np.ndarray:
        if not len(shards):
            return np.empty(0, np.int64)
        return np.concatenate([np.arange(self.first[n], self.last[n]) for n in shards])

    # ---------------------------------------------------------------- the stream
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 0
        if max(1, workers) != self.lanes:
            raise ValueError(f"this VideoStream was made for {self.lanes} DataLoader workers, not {workers}: "
                             "build its loader with make_stream_loader")
        lane = ((info.id if info is not None else 0) + self.start_batch) % self.lanes
        before = max(0, -(-(self.start_batch - lane) // self.lanes))       # this lane's batches before the start
        return self.samples(self.rank * self.lanes + lane, skip=before * self.batch_size)

    def samples(self, stream: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The samples of stream ``stream`` after its first ``skip`` (replayed without reading them)."""
        if skip and not self.infinite:
            raise ValueError("a one-epoch stream starts at its beginning (skip=0)")
        draws = _SlotDraws(self.seed, stream, self.buffer)
        epoch, entered, slot_video, slot_epoch = self._replay(stream, skip, draws)
        shards = self.shards_of(stream, epoch)
        ends = np.cumsum(self.last[shards] - self.first[shards])
        position = int(np.searchsorted(ends, entered, side="right"))      # the shard of the next video
        cursor = entered - (int(ends[position - 1]) if position else 0)    # its videos entered already
        current = int(shards[position]) if cursor else -1

        # The buffer after the replay holds (video, epoch) of clips not read yet. Those of the shard
        # the stream stopped in, before its stop, are read as the stream reads that shard again;
        # the others now, each shard once.
        slots: list[_Clip | None] = [None] * len(slot_video)
        waiting = {(int(v), int(e)): j for j, (v, e) in enumerate(zip(slot_video, slot_epoch))}
        later: list[tuple[int, int]] = []
        now: dict[int, list[tuple[int, int]]] = {}
        for video, video_epoch in sorted(waiting):
            shard = self._shard_of(video)
            if shard == current and video < self.first[shard] + cursor:
                later.append((video, video_epoch))
            else:
                now.setdefault(shard, []).append((video, video_epoch))
        for shard, requests in sorted(now.items()):
            for clip in self._read_shard(shard, requests):
                slots[waiting.pop((clip.video, clip.epoch))] = clip

        for epoch in count(epoch):
            shards = self.shards_of(stream, epoch)
            for shard in shards[position:]:
                shard = int(shard)
                requests = later + [(v, epoch) for v in range(int(self.first[shard]) + cursor, int(self.last[shard]))]
                later, cursor = [], 0
                for clip in self._read_shard(shard, sorted(requests)):
                    if (clip.video, clip.epoch) in waiting:
                        slots[waiting.pop((clip.video, clip.epoch))] = clip
                    elif len(slots) < self.buffer:
                        slots.append(clip)
                    else:
                        j = int(draws.take(1)[0])
                        out, slots[j] = slots[j], clip
                        yield self._sample(out)
            position = 0
            if not self.infinite:
                break
        for j in draws.rng.permutation(len(slots)):
            yield self._sample(slots[j])

    def _replay(self, stream: int, skip: int, draws: _SlotDraws) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Where stream ``stream`` stands once it has yielded ``skip`` samples, from the index alone:
        (epoch, videos of that epoch entered, video and entry epoch of each buffered clip)."""
        slot_video, slot_epoch = np.empty(0, np.int64), np.empty(0, np.int64)
        target = self.buffer + skip if skip else 0      # a sample leaves when a video enters a full buffer
        entered, epoch = 0, 0
        while entered < target:
            videos = self._epoch_videos(self.shards_of(stream, epoch))
            take = min(len(videos), target - entered)
            fill = min(self.buffer - len(slot_video), take)
            slot_video = np.concatenate([slot_video, videos[:fill]])
            slot_epoch = np.concatenate([slot_epoch, np.full(fill, epoch)])
            if take > fill:
                slots = draws.take(take - fill)[::-1]
                replaced, latest = np.unique(slots, return_index=True)     # the last video put in each slot
                slot_video[replaced] = videos[take - 1 - latest]
                slot_epoch[replaced] = epoch
            entered += take
            if entered == target:
                return epoch, take, slot_video, slot_epoch
            epoch += 1
        return 0, 0, slot_video, slot_epoch

    def _shard_of(self, video: int) -> int:
        return int(np.searchsorted(self.last, video, side="right"))

    # ---------------------------------------------------------------- reading a shard
    def _read_shard(self, shard: int, requests: list[tuple[int, int]]) -> Iterator[_Clip]:
        """The clips of ``requests`` ((video, epoch), in the shard's order) from shard ``shard``:
        its index, its boxes, then its tar read whole, each clip given once its frames are read."""
        tar, size, _ = self.shards[shard]
        records = self._shard_videos(shard)
        found = self._shard_boxes(shard) if self.config.detector else None
        clips = []
        for video_position, epoch in requests:
            record = records[int(self.rows[video_position]) - int(self.row_start[shard])]
            video = _video(record, tar)
            words = [self.seed, epoch, zlib.crc32(video.key.encode())]
            shots, frames = choose_clip(video, self.config, np.random.default_rng(words), self.seed)
            wanted = sorted({f for shot in frames for f in shot})
            boxes = None if found is None else _frame_boxes(found, video, wanted, self._missing_boxes)
            clips.append(_Clip(video_position, epoch, shots, frames,
                               {f: video.frame_members[f] for f in wanted}, boxes, video, words))
        url = join(self.root, tar)
        chunks = read_sequentially(url, size, self._cache_path(url), rebuild=f"vivi index {self.root}")
        yield from _collect(chunks, clips, url)

    def _shard_videos(self, shard: int) -> list[dict]:
        """The video records of the shard's JSON index, checked against the dataset's index."""
        tar, _, index_size = self.shards[shard]
        url = join(self.root, tar[: -len(".tar")] + ".json")
        cached = self._cache_path(url)
        if cached is not None and _size(cached) == index_size:
            data = cached.read_bytes()
        else:
            data = read_bytes(url)
            if cached is not None and len(data) == index_size:
                cached.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(cached, data)
        videos = json.loads(data)["videos"] if len(data) == index_size else None
        if videos is None or len(videos) != self.row_count[shard]:
            raise ValueError(f"{url} is not the shard index that {join(self.root, INDEX_FILE)} was built from "
                             f"({len(data)} bytes, the index records {index_size}): the shard was made again "
                             f"since; rebuild the index with `vivi index {self.root}`")
        return videos

    def _shard_boxes(self, shard: int) -> dict[str, list]:
        name = Path(self.shards[shard][0]).with_suffix(".json").name
        url = join(self.root, DETECTIONS_DIR, self.config.detector, name)
        try:
            return parse_detections(read_bytes(url), url)
        except FileNotFoundError:
            self._missing_boxes(f"no {name}")

    def _missing_boxes(self, what: str):
        raise ValueError(f"the detections {self.config.detector!r} of {self.root} have {what}: a `vivi detect` "
                         f"that stopped early, or shards ingested after it; run `vivi detect {self.root} --detector "
                         "...` again with the same detector to finish them")

    def _check_detections(self, video_shard: np.ndarray) -> None:
        """Refuse a missing detector at once; when the detections' index matches the dataset, also
        eligible videos without boxes, and learn the number of boxes."""
        folder = join(self.root, DETECTIONS_DIR, self.config.detector)
        if read_optional(join(folder, "detector.json")) is None:
            found = ", ".join(available_detectors(self.root)) or "none"
            raise FileNotFoundError(f"no detections named {self.config.detector!r} in {self.root} (available: "
                                    f"{found}); run `vivi detect {self.root} --detector ...`")
        try:
            header, columns = read_columns(join(folder, INDEX_FILE), f"vivi index {self.root}", names=["video_covered"])
        except FileNotFoundError as error:
            if missing_bucket(error):
                raise
            return
        if header.get("dataset_shards") != self.shards:
            return
        self.num_boxes = int(header["columns"]["boxes"][1][0])
        require_covered(np.asarray(columns["video_covered"], bool), self.rows, self.config.detector, self.root,
                        lambda row: self._key(row, video_shard))

    def _key(self, row: int, video_shard: np.ndarray) -> str:
        shard = int(video_shard[row])
        return self._shard_videos(shard)[row - int(self.row_start[shard])]["key"]

    def _cache_path(self, url: str | Path) -> Path | None:
        """Where the cache keeps the object ``url``: CACHE/<scheme>/<bucket and path> (``file`` for a folder)."""
        if self.cache is None:
            return None
        scheme, sep, rest = os.fspath(url).partition("://")
        parts = (scheme, rest) if sep else ("file", os.path.abspath(url))
        return self.cache.joinpath(*(part.strip("/") for part in parts))

    def _sample(self, clip: _Clip) -> dict[str, torch.Tensor]:
        sample, crop = clip_tensors(clip.jpegs.__getitem__, clip.shots, clip.frames, clip.video, self.config.size,
                                    functools.partial(frame_name, clip.source), self.crop, clip.seed)
        if clip.boxes is not None:
            sample.update(_ClipBoxes(clip.boxes).boxes(0, clip.frames, crop, self.config.max_boxes))
        return sample


def _read_index(root: str | Path, sizes: bool) -> tuple[list[list], np.ndarray, np.ndarray, np.ndarray | None]:
    """(shards as [tar, tar bytes, index bytes], each video's shard, its longest run of shots with
    frames, its frame size when ``sizes``) from the dataset's index: its columns by ranged reads
    at a URL, the opened index of a local folder (built from the shard indices without index.bin)."""
    if not is_url(root):
        require_dataset(root)
        index = open_index(root)
        frame_size = np.asarray(index.video_frame_size) if sizes else None
        return index.shard_records, np.asarray(index.video_shard), np.asarray(index.video_run), frame_size
    names = ["video_shard", "video_run"] + (["video_frame_size"] if sizes else [])
    try:
        header, columns = read_columns(join(root, INDEX_FILE), f"vivi index {root}", names=names)
    except FileNotFoundError as error:
        if missing_bucket(error):
            raise
        raise FileNotFoundError(f"{root} has no {INDEX_FILE}: streaming from object storage starts from the "
                                f"dataset's index; write it with `vivi index {root}`") from None
    if any(name not in columns for name in names) or "shards" not in header:
        raise ValueError(f"{join(root, INDEX_FILE)} was written by another version of vivi: rebuild it with "
                         f"`vivi index {root}`")
    frame_size = columns["video_frame_size"] if sizes else None
    return header["shards"], columns["video_shard"], columns["video_run"], frame_size


def _video(record: dict, tar: str) -> Video:
    """The :class:`Video` of a record of a shard's JSON index."""
    return Video(key=record["key"], source=record["source"], shard=tar, fps=record["fps"],
                 duration_s=record["duration_s"], frame_size=tuple(record["frame_size"]),
                 shot_starts_s=tuple(record["shot_starts_s"]), frame_times_s=tuple(record["frame_times_s"]),
                 frame_native_index=tuple(record["frame_native_index"]), frame_shot=tuple(record["frame_shot"]),
                 frame_members=tuple(map(tuple, record["frame_members"])),
                 record_member=tuple(record["record_member"]))


def _frame_boxes(found: dict[str, list], video: Video, frames: list[int],
                 missing: Callable[[str], None]) -> dict[int, np.ndarray]:
    """The boxes of ``frames`` of ``video`` from a shard's detections file, each frame's highest
    score first (the order of the detections' columns, ``vivi.data.boxes``)."""
    rows = found.get(video.key)
    if rows is None:
        missing(f"no boxes for video {video.key} (shard {video.shard})")
    out = {}
    for frame in frames:
        boxes = np.asarray(rows[frame] if frame < len(rows) else [], np.float32).reshape(-1, 6)
        out[frame] = boxes[np.argsort(-boxes[:, 5], kind="stable")]
    return out


def _collect(chunks: Iterator[tuple[int, bytes]], clips: list[_Clip], url: str | Path) -> Iterator[_Clip]:
    """``clips`` (in the tar's order) with their JPEG bytes cut from the ``chunks`` ((offset, bytes),
    in order) of the tar ``url``, each as soon as its last frame has been read."""
    spans = sorted({span for clip in clips for span in clip.members.values()})
    got: dict[int, bytes] = {}
    part, k, done = bytearray(), 0, 0
    for start, data in chunks:
        end = start + len(data)
        while k < len(spans) and spans[k][0] < end:
            offset, size = spans[k]
            part += data[max(offset, start) - start:min(offset + size, end) - start]
            if offset + size > end:
                break                                   # the member goes on in the next chunk
            got[offset], part, k = bytes(part), bytearray(), k + 1
        while done < len(clips) and all(offset in got for offset, _ in clips[done].members.values()):
            clips[done].jpegs = {f: got[offset] for f, (offset, _) in clips[done].members.items()}
            done += 1
            yield clips[done - 1]
    if done < len(clips):
        raise ValueError(f"{url}: its shard index places frames past the end of the tar; the index does not "
                         f"belong to this tar: ingest the shard again")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def read_sequentially(url: str | Path, size: int, cache: Path | None = None,
                      rebuild: str = "vivi index DATA") -> Iterator[tuple[int, bytes]]:
    """Bytes 0 .. ``size`` of a file or object in order, as (offset, chunk) of :data:`CHUNK_BYTES`:
    a local file read forward, an object by consecutive ranged requests (each retried by
    ``vivi.storage``; what still fails raises its one-line :class:`StorageError`).

    ``cache``: a local file name; a copy of ``size`` bytes there is read instead, else one is written
    there while reading (and appears when complete). An object that ends before ``size`` raises
    ValueError naming it and ``rebuild``, the command that makes the index again.
    """
    if cache is not None and _size(cache) == size:
        url, cache = cache, None
    local = None if is_url(url) else open(url, "rb")
    tmp = None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = shared_tmp_name(cache)
    copy = open(tmp, "wb") if tmp is not None else None
    try:
        for start in range(0, size, CHUNK_BYTES):
            end = min(start + CHUNK_BYTES, size)
            try:
                data = local.read(end - start) if local is not None else read_bytes(url, start, end)
            except (StorageError, FileNotFoundError):
                if not 0 <= _object_size(url) < size:     # not a range past the object's end
                    raise
                data = b""
            if len(data) < end - start:
                raise ValueError(f"{url} is {_object_size(url)} bytes but the dataset's index says {size}: the "
                                 "shard was cut short, or replaced after the index was built; upload it again, or "
                                 f"rebuild the index with `{rebuild}`")
            if copy is not None:
                copy.write(data)
            yield start, data
        if copy is not None:
            copy.close()
            os.replace(tmp, cache)
    finally:
        for f in (local, copy):
            if f is not None:
                f.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _object_size(url: str | Path) -> int:
    """The size of a file or object, -1 when it cannot be learned (asked once: this explains an
    error, it is not worth the retries)."""
    if not is_url(url):
        return _size(Path(url))
    try:
        fs, path = filesystem(url)
        return int(fs.size(path))
    except Exception:          # whatever the back end raises, the caller's own error stands
        return -1


class StreamLoader(DataLoader):
    """The DataLoader of a :class:`VideoStream`. A worker's error arrives as its own one-line
    message (a DataLoader wraps it in one that carries the worker's traceback)."""

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (OSError, ValueError) as error:
                text = str(error).rstrip()
                if not (text.startswith("Caught ") and "Original Traceback" in text):
                    raise
                # the other workers stop now: left to the iterator's finalizer, each would be waited
                # for until the DataLoader's join timeout (seconds)
                shutdown = getattr(batches, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
                _, sep, message = text.splitlines()[-1].partition(": ")
                raise type(error)(message if sep else text.splitlines()[-1]) from None
            yield batch


def make_stream_loader(root: str | Path, config: ClipConfig, *, batch_size: int, seed: int = 0, workers: int = 2,
                       buffer: int = 256, cache: str | Path | None = None, infinite: bool = True,
                       start_batch: int = 0, rank: int | None = None, world_size: int | None = None,
                       drop_last: bool | None = None, crop=None) -> StreamLoader:
    """A DataLoader of clip batches for this rank (``batch_size`` videos per rank and step) streamed
    from whole shards of the dataset at ``root`` (a URL or a folder), ``workers`` streams.

    ``start_batch`` continues the batches of a run at that batch (to resume training exactly, with
    the same ``workers`` and world size); ``buffer``: videos per stream's shuffle buffer;
    ``cache``: a folder keeping the shards read; ``crop``: the AugmentConfig whose crop every frame
    takes (frames come out S x S, see :mod:`vivi.data.clips`).
    """
    dataset = VideoStream(root, config, seed=seed, buffer=buffer, cache=cache, batch_size=batch_size,
                          workers=workers, start_batch=start_batch, rank=rank, world_size=world_size,
                          infinite=infinite, crop=crop)
    if not config.allow_incomplete:
        require_complete(dataset.root, [shard[0] for shard in dataset.shards])
    return StreamLoader(dataset, batch_size=batch_size, num_workers=workers,
                        drop_last=infinite if drop_last is None else drop_last,
                        persistent_workers=workers > 0 and infinite, pin_memory=torch.cuda.is_available(),
                        prefetch_factor=4 if workers > 0 else None)
