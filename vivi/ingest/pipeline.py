"""``ingest``: a collection of videos -> a sharded dataset of shots and frames.

The run is planned before anything is decoded: the inputs are expanded to a sorted list of
files, video i gets the key ``v{i:07d}`` and shard j holds videos ``[j*P, (j+1)*P)``. Because the
plan depends only on the inputs, any number of processes or machines can work on one dataset
(``part=(i, n)`` takes the shards j with j % n == i), an interrupted run is resumed by running it
again (complete shards are skipped, see ``shards.py``), and the result does not depend on how the
work was split.

Inputs and the dataset may be in object storage (``vivi.storage``): an input URL is downloaded by
the worker that decodes it, to a local temporary file removed afterwards, and a dataset URL
receives the same objects as a local folder, each shard staged locally and uploaded tar first.

With ``ray`` each shard still to do is a task on a Ray cluster (``vivi.cluster``) that decodes its
videos and puts the shard in place itself; the dataset is the same, byte for byte.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import posixpath
import select
import signal
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..files import parse_json, refuse_other_settings, writer_lock
from ..storage import (
    download,
    filesystem,
    is_url,
    join,
    listing,
    location,
    missing_bucket,
    name_of,
    read_bytes,
    remove,
    retrying,
    upload,
    write_bytes,
)
from . import shards
from .decode import SamplingConfig, VideoError, decode_video
from .index import INDEX_FILE, write_index

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg",
                    ".ts", ".flv", ".wmv", ".3gp", ".ogv"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}
PLAN_VERSION = 1


@dataclass(frozen=True)
class IngestConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # decoding, cuts, frame sampling
    videos_per_shard: int = 32    # videos per tar shard; a shard is the unit of resumption
    min_shots: int = 2            # videos with fewer shots are kept but counted (the loader filters)

    def __post_init__(self):
        if self.videos_per_shard < 1 or self.min_shots < 1:
            raise ValueError(f"ingest settings out of range: videos per shard {self.videos_per_shard} and min "
                             f"shots {self.min_shots} must be at least 1")


@dataclass
class IngestSummary:
    out: Path | str               # the dataset's folder, or its URL
    videos_planned: int
    shards_planned: int
    shards_done: int              # complete shards in the dataset
    shards_written: int           # by this run
    shards_skipped: int           # already complete from an earlier run
    videos: int                   # ingested videos in the dataset (all complete shards)
    failed: int
    shots: int
    frames: int
    few_shots: int                # ingested videos with fewer than ``min_shots`` shots
    damaged: int                  # ingested videos with damaged packets (skipped, their spoilt frames not stored)
    min_shots: int
    complete: bool                # every planned shard is done
    seconds: float
    failure_reasons: dict[str, int]

    def __str__(self) -> str:
        lines = [f"dataset {self.out}: {self.videos} videos, {self.shots} shots, {self.frames} frames "
                 f"({self.shards_done}/{self.shards_planned} shards)"]
        lines.append(f"this run: {self.shards_written} shards written, {self.shards_skipped} already done, "
                     f"{self.seconds:.1f} s")
        if self.failed:
            reasons = "; ".join(f"{n}x {r}" for r, n in sorted(self.failure_reasons.items(), key=lambda x: -x[1]))
            lines.append(f"skipped {self.failed} videos that could not be ingested "
                         f"(see {join(self.out, 'failures.jsonl')}): {reasons}; once repaired, `--retry-failed` "
                         "ingests them")
        if self.few_shots:
            lines.append(f"{self.few_shots} videos have fewer than {self.min_shots} shots "
                         "(kept; the loader skips videos with fewer shots than it needs)")
        if self.damaged:
            lines.append(f"{self.damaged} videos have damaged packets (kept: the packets were skipped and the "
                         "frames they spoil not stored; see damaged_packets in manifest.json)")
        if not self.complete:
            lines.append(f"not complete: this part's shards are done, {self.shards_planned - self.shards_done} of "
                         "the other parts' are not (run those parts, --part j/n, or wait for them to finish)")
        return "\n".join(lines)


def expand_inputs(inputs: list[str | Path]) -> list[Path | str]:
    """Video files from files, folders (recursive, by extension) and text files listing paths.

    A list file holds one path per line (blank lines and lines starting with # are ignored);
    relative paths are taken relative to the list file. Returns sorted, de-duplicated absolute paths,
    then the URLs of videos in object storage (:func:`_add_url`), sorted.
    """
    return [source if is_url(source) else Path(source) for source in expand_sources(inputs)]


def expand_sources(inputs: list[str | Path]) -> list[str]:
    """:func:`expand_inputs` as strings, the form the plan holds (no Path per video: a list of a
    million videos is planned in seconds)."""
    found: set[str] = set()
    urls: set[str] = set()
    for item in inputs:
        if is_url(item):
            _add_url(os.fspath(item), found, urls)
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            found.update(_videos_under(path))
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            _add_listed(path.read_text(encoding="utf-8-sig"), path.parent, found, urls)
        elif path.exists():
            found.add(str(path.resolve()))
        else:
            raise FileNotFoundError(f"input {item!s} does not exist: pass video files, folders of videos, "
                                    "or a .txt file listing video paths")
    # in the order of Path objects (part by part: "a/b" before "a-b"), as plans have always listed them
    return [*sorted(found, key=lambda path: path.replace("/", "\0")), *sorted(urls)]


def _add_listed(text: str, base: Path | str, found: set[str], urls: set[str]) -> None:
    """The entries of a list file in the folder (or at the URL prefix) ``base``.

    An entry with a video extension is taken as a file without looking at it (made absolute and
    normalised, symbolic links kept: a million entries cost no file-system call; one that is not
    a video file is that entry's failure); any other entry is looked at, and a folder searched."""
    base_is_url = is_url(base)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if is_url(line) or (base_is_url and not line.startswith(("/", "~"))):
            _add_url(line if is_url(line) else _relative_url(base, line), found, urls, listed=True)
            continue
        listed = os.path.join(base, os.path.expanduser(line))
        if os.path.splitext(listed)[1].lower() in VIDEO_EXTENSIONS:
            found.add(os.path.abspath(listed))
        elif os.path.isdir(listed):
            found.update(_videos_under(Path(listed)))
        else:
            found.add(str(Path(listed).resolve()))


def _relative_url(base: str, line: str) -> str:
    """The URL of ``line`` relative to the prefix ``base`` (``..`` resolved: object keys are literal)."""
    scheme, _, rest = join(base, line).partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}"


def _add_url(url: str, found: set[str], urls: set[str], listed: bool = False) -> None:
    """A URL input: a video (by its extension; not checked here: one that cannot be downloaded is
    that video's failure, as a missing file named in a list), a list file (not inside a list), or
    else a prefix (a "folder"), listed recursively for video files."""
    suffix = posixpath.splitext(url.split("?", 1)[0])[1].lower()
    if suffix in VIDEO_EXTENSIONS:
        urls.add(url)
    elif suffix in LIST_EXTENSIONS and not listed:
        _add_listed(read_bytes(url).decode("utf-8-sig"), url.rsplit("/", 1)[0], found, urls)
    else:
        urls.update(_videos_at(url))


def _videos_at(prefix: str) -> list[str]:
    """The URLs of the video files under the object-storage prefix ``prefix``."""
    fs, remote = filesystem(prefix)
    remote = remote.rstrip("/")
    fs.invalidate_cache(remote)
    keys = retrying(lambda: fs.find(remote), prefix)
    base = prefix.rstrip("/")
    return [f"{base}/{key[len(remote) + 1:]}" for key in keys
            if key.startswith(remote + "/") and posixpath.splitext(key)[1].lower() in VIDEO_EXTENSIONS]


def _videos_under(folder: Path) -> set[str]:
    """Video files in ``folder`` and its sub-folders, symbolic links to folders followed (each
    real folder once, so a link loop ends). A name with a video extension that is not a video
    file (a broken symbolic link, a folder ``clip.mp4/``) is in the list too: it is reported as
    its failure rather than skipped unseen, and the plan stays the same once it is repaired."""
    found, seen = set(), set()
    for parent, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        for name in (*files, *subfolders):
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                path = Path(parent, name)
                # a broken link keeps its own name: resolving it would name a file that is not there
                found.add(str(path.resolve()) if os.path.exists(path) else os.path.abspath(path))
    return found


def _check_plan(out: Path | str, plan: dict) -> list[tuple[Path, bytes]]:
    """Check ``plan`` against the dataset's plan.json; return the file to write if there is none.

    A new plan is written in the durable round of the first shard (renamed before it: no shard
    is ever without its plan), saving a round of fsyncs (a few ms of a short ingest). In object
    storage it is uploaded at once, which also finds a wrong bucket or credentials before any
    video is decoded.
    """
    path = join(out, "plan.json")
    if is_url(out):
        if _refuse_other_plan(path, plan) is None:
            write_bytes(path, shards.json_bytes(plan))
        return []
    if out.is_dir():
        shards.remove_stale_tmp_files(out)
    if _refuse_other_plan(path, plan) is not None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    return [(path, shards.json_bytes(plan))]


def _refuse_other_plan(path: Path | str, plan: dict) -> dict | None:
    return refuse_other_settings(path, plan, holds="a dataset", read=_with_borders, describe=lambda k, then, now: {
        "inputs": "the input videos", "config": "the ingest settings"}.get(k, k),
        fix="pass a new --out folder (or delete this one) to ingest a different collection")


def _with_borders(plan: dict) -> dict:
    """A stored plan, with ``keep_borders: true`` where it predates the setting (its frames kept
    their bars): such a dataset is resumed with ``--keep-borders``, not mixed with cropped frames."""
    config = plan.get("config")
    sampling = config.get("sampling") if isinstance(config, dict) else None
    if isinstance(sampling, dict) and "keep_borders" not in sampling:
        return {**plan, "config": {**config, "sampling": {**sampling, "keep_borders": True}}}
    return plan


@contextmanager
def _local_copy(source: str) -> Iterator[Path]:
    """The video at the URL ``source`` in a local temporary file, removed when the block ends;
    a download that fails is the video's :class:`VideoError`."""
    with tempfile.TemporaryDirectory(prefix="vivi-video-") as folder:
        # the URL's extension kept: FFmpeg takes a hint from it for formats without a header
        local = Path(folder) / ("video" + posixpath.splitext(source.split("?", 1)[0])[1])
        try:
            download(source, local)
        except OSError as error:
            if isinstance(error, FileNotFoundError) and not missing_bucket(error):
                raise VideoError("file not found") from None
            raise VideoError(f"download failed ({error})") from None
        yield local


def _ingest_one(job: tuple[int, str, SamplingConfig, int]) -> tuple[int, dict | None, list[bytes], str | None]:
    index, source, sampling, threads = job
    try:
        if not is_url(source) and os.path.islink(source) and not os.path.exists(source):
            raise VideoError("broken symbolic link")
        if is_url(source):
            with _local_copy(source) as local:
                video = decode_video(local, sampling, threads)
        else:
            video = decode_video(source, sampling, threads)
    except VideoError as error:
        return index, None, [], str(error)
    except Exception as error:  # a decoder bug must not take down a whole collection's ingest
        return index, None, [], f"unexpected {error.__class__.__name__}: {error}"
    record = {
        "key": shards.video_key(index), "source": source, "fps": video.fps,
        "width": video.width, "height": video.height, "num_native_frames": video.num_native_frames,
        "duration_s": video.duration_s, "shot_starts": video.shot_starts, "shot_starts_s": video.shot_starts_s,
        "frame_size": list(video.frame_size), "display": video.display.record(),
        "damaged_packets": video.damaged_packets, "unclean_frames": video.unclean_frames,
        "frame_times_s": video.frame_times_s, "frame_native_index": video.frame_native_index,
        "frame_shot": video.frame_shot,
    }
    if video.crop is not None:      # the stored frames show this part of the decoded frame (bars cut off)
        record["crop"] = [int(v) for v in video.crop]
    return index, record, video.jpegs, None


def ingest(inputs: list[str | Path], out: str | Path, config: IngestConfig = IngestConfig(), *,
           workers: int = 1, part: tuple[int, int] = (0, 1), progress: bool = True,
           retry_failed: bool = False, repair: bool = False, ray: str | None = None) -> IngestSummary:
    """Ingest the videos named by ``inputs`` into the dataset folder ``out`` (see module docstring).

    Resumable: complete shards are kept and skipped. ``workers`` processes decode videos in
    parallel; ``part=(i, n)`` processes only the i-th of n disjoint parts of the plan.
    ``retry_failed``: complete shards that hold failed videos are made again (after the files were
    repaired or replaced); their detections, if any, are dropped for ``vivi detect`` to redo.
    ``inputs`` and ``out`` may be URLs of object storage (module docstring).
    ``repair``: complete shards holding a frame that no longer decodes (damaged on disk since,
    see ``vivi inspect --verify``) are made again too, their detections dropped.
    ``ray``: run each shard as a Ray task (``vivi.cluster``) on the cluster at this address, or
    on a local Ray instance ("local"); ``workers`` is then not used.
    The run holds the lock of its part of ``out`` (``vivi.files.writer_lock``): parts run side by
    side, the same part twice is refused.
    """
    start = time.perf_counter()
    out = location(out)
    if workers < 1:
        raise ValueError(f"--workers {workers} is out of range: give at least 1 (parallel decoding processes)")
    plan, unwritten, mine, todo, redo = plan_ingest(inputs, out, config, part, retry_failed)
    sources = plan["inputs"]
    with writer_lock(out, "ingest", key="part-{}-of-{}".format(*part)):
        if repair:
            redo |= _damaged_shards(out, [j for j in mine if j not in todo], progress)
            todo = sorted({*todo, *redo})
        if todo:     # shards change: an index would name their old offsets (written again once complete)
            remove(join(out, INDEX_FILE))
        _drop_detections(out, sorted(redo))
        if ray is not None:
            _ingest_on_ray(ray, out, sources, config, todo, unwritten, progress)
            last, unwritten = None, []
        else:
            last = _ingest_here(out, sources, config, todo, unwritten, workers, progress)
        renames = last[1] if last is not None else shards.stage_files(unwritten)
        with shards.unstaged_on_error(renames):       # a stop before the manifest's round leaves no temporary file
            summary = _finalize(out, plan, last[0] if last is not None else None, renames, config.min_shots)
    summary.shards_written, summary.shards_skipped = len(todo), len(mine) - len(todo)
    summary.seconds = time.perf_counter() - start
    if summary.complete and summary.videos == 0:
        reasons = "; ".join(f"{n}x {r}" for r, n in sorted(summary.failure_reasons.items(), key=lambda x: -x[1]))
        raise ValueError(f"none of the {summary.failed} videos could be ingested ({reasons}): see "
                         f"{join(out, 'failures.jsonl')}, and once they are repaired run again with --retry-failed")
    return summary


def _damaged_shards(out: Path | str, complete: list[int], progress: bool) -> set[int]:
    """The shards among ``complete`` holding a stored frame that does not decode, or whose index
    is damaged (a quick look at its first bytes took it for complete)."""
    if not complete:
        return set()
    from ..data.inspect import verify_dataset
    names = {f"{shards.shard_name(j)}.tar": j for j in complete}
    result = verify_dataset(out, only=set(names), progress=progress)
    return {names[name] for name in [*result["shards_to_repair"], *result["incomplete"]] if name in names}


def plan_ingest(inputs: list[str | Path], out: Path | str, config: IngestConfig, part: tuple[int, int] = (0, 1),
                retry_failed: bool = False) -> tuple[dict, list, range, list[int], set[int]]:
    """The run :func:`ingest` makes, before any video is decoded: (the plan, the plan file to
    write if the dataset has none, this part's shards, those still to do, the complete ones to
    make again for ``retry_failed``). Checks the plan against the dataset's."""
    part_index, part_count = part
    if not (part_count >= 1 and 0 <= part_index < part_count):
        raise ValueError(f"part {part_index}/{part_count} is not valid: use i/n with 0 <= i < n")
    sources = expand_sources(inputs)
    if not sources:
        raise ValueError(f"no video files found in {', '.join(map(str, inputs))} "
                         f"(extensions looked for: {' '.join(sorted(VIDEO_EXTENSIONS))})")
    plan = {"version": PLAN_VERSION, "config": asdict(config), "inputs": sources}
    unwritten = _check_plan(out, plan)
    per_shard = config.videos_per_shard
    num_shards = (len(sources) + per_shard - 1) // per_shard
    mine = range(part_index, num_shards, part_count)
    done = shards.complete_shards(out, mine)
    redo = set()
    if retry_failed:
        indices = shards.read_shard_indices(out, sorted(done))
        redo = {j for j, shard_index in indices.items() if shard_index is not None and shard_index["failures"]}
    return plan, unwritten, mine, [j for j in mine if j not in done or j in redo], redo


def _ingest_here(out: Path | str, sources: list[str], config: IngestConfig, todo: list[int],
                 unwritten: list[tuple[Path, bytes]], workers: int, progress: bool) -> tuple | None:
    """Make the shards ``todo`` in this process and ``workers`` processes; return (index, renames)
    of the last one if it is staged but not in place (a local folder: the manifest's round puts
    it there), with the files ``unwritten`` in the renames if no shard took them."""
    per_shard = config.videos_per_shard
    # With a process per core, FFmpeg's own threads only add overhead.
    threads = 1 if workers >= (os.cpu_count() or 1) else 0
    jobs = ((i, sources[i], config.sampling, threads)      # made as they are taken: a plan may hold millions
            for j in todo for i in range(j * per_shard, min((j + 1) * per_shard, len(sources))))

    bar = tqdm(total=sum(min(per_shard, len(sources) - j * per_shard) for j in todo), unit="video",
               desc=f"ingest {name_of(out)}", disable=not progress, dynamic_ncols=True)
    pending: dict[int, list] = {j: [] for j in todo}
    results = _run_jobs(jobs, workers) if workers > 1 else map(_ingest_one, jobs)
    staged: list = []        # a shard's files under their temporary names until it is in place
    try:
        with shards.unstaged_on_error(staged):     # a stop (Ctrl-C, SIGTERM, an error) leaves no temporary file
            last, unwritten = _put_in_place(out, sources, per_shard, results, pending, staged, unwritten, bar)
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    if last is None:
        return None
    return last[0], last[1] + shards.stage_files(unwritten)


def _put_in_place(out: Path | str, sources: list[str], per_shard: int, results: Iterable, pending: dict,
                  staged: list, unwritten: list, bar) -> tuple[tuple | None, list]:
    """Put each shard in place as the ``results`` of its videos come in (``staged``: the files of
    the one being written); return the last shard, staged for the manifest's round, and the files
    ``unwritten`` if no shard took them."""
    native_frames, last = 0, None
    for index, record, jpegs, reason in results:
        j = index // per_shard
        pending[j].append((index, record, jpegs, reason))
        if record is not None:
            native_frames += record["num_native_frames"]
        bar.update(1)
        bar.set_postfix_str(f"{native_frames / max(bar.format_dict['elapsed'], 1e-9):.0f} frames/s decoded",
                            refresh=False)
        if len(pending[j]) < min((j + 1) * per_shard, len(sources)) - j * per_shard:
            continue
        contents = _shard_contents(j, sorted(pending.pop(j), key=lambda r: r[0]), sources)
        if is_url(out):
            shards.upload_shard(out, *contents)
            continue
        shard_index, renames = shards.stage_shard(out, *contents)
        staged[:] = renames                   # (removed if what follows fails)
        staged[:] = renames = shards.stage_files(unwritten) + renames
        unwritten = []
        if pending:   # in place now: a shard is the unit of resumption
            shards.replace_durably(renames)
            staged.clear()
        else:
            last = shard_index, renames
    return last, unwritten


def _ingest_on_ray(address: str, out: Path | str, sources: list[str], config: IngestConfig, todo: list[int],
                   unwritten: list[tuple[Path, bytes]], progress: bool) -> None:
    """Make the shards ``todo`` as Ray tasks, one per shard, each writing its shard in place."""
    from .. import cluster
    shards.write_all_atomic(unwritten)         # the plan, before any shard names it
    if not is_url(out):
        out = out.absolute()                   # the tasks' working folder is not this one
    per_shard = config.videos_per_shard

    def shard_task(j: int) -> tuple:
        first = j * per_shard
        return out, j, first, sources[first:first + per_shard], config.sampling

    with cluster.connected(address) as ray:
        bar = tqdm(total=sum(min(per_shard, len(sources) - j * per_shard) for j in todo), unit="video",
                   desc=f"ingest {name_of(out)}", disable=not progress, dynamic_ncols=True)
        try:
            for _ in cluster.run_tasks(ray, ingest_shard, map(shard_task, todo), num_cpus=1,
                                       on_crash=lambda *args: _isolate_crash(ray, *args),
                                       progress=lambda videos: bar.update(videos)):
                pass
        finally:
            bar.close()
    return None


KILL_ONCE = "VIVI_KILL_TASK_ONCE"   # tests: a marker file; the first task to find it absent dies mid-shard


def ingest_shard(out: Path | str, j: int, first: int, sources: list[str], sampling: SamplingConfig,
                 results: list | None = None) -> int:
    """A Ray task: decode the videos ``sources`` (keys from ``first``) of shard ``j`` (or take
    their ``results``) and put the shard in place, as :func:`ingest` does in one process; return
    the number of videos. A video that fails is the shard's failure record, not an error."""
    if results is None:
        results = [_ingest_one((first + k, source, sampling, 1)) for k, source in enumerate(sources)]
    contents = _shard_contents(j, results, dict(enumerate(sources, first)))
    if is_url(out):
        shards.upload_shard(out, *contents)
        return len(sources)
    _, renames = shards.stage_shard(out, *contents)
    marker = os.environ.get(KILL_ONCE)
    if marker and not os.path.exists(marker):      # a worker lost while it writes (tests/test_ray.py)
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    shards.replace_durably(renames)
    return len(sources)


def _isolate_crash(ray, out: Path | str, j: int, first: int, sources: list[str], sampling: SamplingConfig) -> int:
    """Shard ``j``'s task died every time it ran: decode its videos in a task each, the one whose
    process dies again is that video's failure, and the shard is written from the results."""
    from .. import cluster
    jobs = [((first + k, source, sampling, 1),) for k, source in enumerate(sources)]
    results = list(cluster.run_tasks(ray, _ingest_one, jobs, num_cpus=1, max_retries=0, ordered=True,
                                     on_crash=lambda job: (job[0], None, [], CRASHED)))
    return next(cluster.run_tasks(ray, ingest_shard, [(out, j, first, sources, sampling, results)], num_cpus=1))


def _drop_detections(out: Path | str, retried: list[int]) -> None:
    """Remove the detections of the shards ``retried`` (made again: their boxes would miss the new
    videos)."""
    if not retried:
        return
    names = {f"{shards.shard_name(j)}.json" for j in retried}
    if is_url(out):
        for name in listing(join(out, "detections"), depth=2):
            if name.count("/") == 1 and name.split("/")[1] in names:
                remove(join(out, "detections", name))
        return
    for name in sorted(names):
        for sidecar in out.glob(f"detections/*/{name}"):
            sidecar.unlink()


def _run_jobs(jobs: Iterable, workers: int, work=_ingest_one):
    """Results of ``work`` (``_ingest_one``) over ``jobs`` in order, from ``workers`` processes.

    At most ``4 * workers`` videos are in flight, so memory stays bounded. A worker that dies
    (FFmpeg crashing on a corrupt file, say) breaks the pool: the videos in flight are then
    retried one at a time in a fresh process each, the one that crashes again is reported as a
    failure, and a new pool takes the rest.
    """
    context = multiprocessing.get_context("forkserver")   # clean workers, safe if the caller has threads
    context.set_forkserver_preload(["vivi.ingest.pipeline"])   # imported once, workers start fast
    jobs = iter(jobs)
    job = next(jobs, None)
    while job is not None:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                   initargs=(dict(os.environ), os.getpid()))
        window: deque = deque()
        try:
            while job is not None or window:
                while job is not None and len(window) < 4 * workers:
                    window.append((job, pool.submit(work, job)))
                    job = next(jobs, None)
                _, future = window[0]
                result = future.result()
                window.popleft()
                yield result
        except BrokenProcessPool:
            pool.shutdown(wait=True)
        except BaseException:
            # Ctrl-C, an error in the caller, or the caller stopped reading: end the workers now
            # rather than wait for the videos in flight (a clean shutdown can hang once workers
            # have been interrupted themselves).
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown(wait=True)
        for broken, _ in window:   # the pool broke: isolate the culprit
            yield _run_isolated(work, broken, context)


CRASHED = "the decoding process crashed on this file (corrupt or unsupported video)"


def _run_isolated(work, job, context):
    with ProcessPoolExecutor(1, mp_context=context, initializer=_worker_init,
                             initargs=(dict(os.environ), os.getpid())) as pool:
        try:
            return pool.submit(work, job).result()
        except BrokenProcessPool:
            return job[0], None, [], CRASHED


def _worker_init(environment: dict[str, str] | None = None, caller: int | None = None) -> None:
    import cv2
    cv2.setNumThreads(1)   # one process per core already; OpenCV's own threads would oversubscribe
    if environment is not None:
        # The caller's environment now (the object store's endpoint and credentials): workers are
        # forked from a server process that may have started before the caller set them.
        os.environ.clear()
        os.environ.update(environment)
    if caller is not None:
        _end_with(caller)


def _end_with(caller: int) -> None:
    """End this worker as soon as the ``caller`` (ingest's process) ends, killed or not.

    Nothing else would: a worker waits on its task queue, whose writing end it holds itself, and
    its parent, the fork server, waits for every worker to close the server's liveness pipe
    (each worker is handed one) before it exits; a parent-death signal would thus never fire.
    A thread waits for the caller's end on a process file descriptor (Linux), else polls it.
    """
    def watch() -> None:
        try:
            handle = os.pidfd_open(caller)
        except ProcessLookupError:
            os._exit(1)
        except (AttributeError, OSError):
            while _alive(caller):
                time.sleep(1.0)
            os._exit(1)
        select.select([handle], [], [])     # readable once the process has ended
        os._exit(1)

    threading.Thread(target=watch, name="vivi-end-with-caller", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _shard_contents(j: int, results: list, sources: list[str]) -> tuple[int, list, list]:
    """(j, samples, failures) of shard j, for :func:`shards.stage_shard` and :func:`shards.upload_shard`."""
    samples = [(record, jpegs) for _, record, jpegs, _ in results if record is not None]
    failures = [{"key": shards.video_key(index), "source": sources[index], "reason": reason}
                for index, record, _, reason in results if record is None]
    return j, samples, failures


def collect(out: str | Path) -> dict:
    """The manifest of the dataset at ``out``, read from its complete shards (writes nothing)."""
    out = location(out)
    return _manifest(_read_plan(out), shards.completed_shard_indices(out))


def _read_plan(out: Path | str) -> dict:
    shards.require_dataset(out)
    return parse_json(read_bytes(join(out, "plan.json")), join(out, "plan.json"),
                      "it records the dataset's inputs and settings: restore it from a copy (a run with the same "
                      "inputs and settings writes the same file), or ingest into a new folder")


def _video_row(shard_index: dict, v: dict) -> dict:
    """A video's line of the manifest."""
    return {"key": v["key"], "source": v["source"], "shard": shard_index["shard"],
            "duration_s": v["duration_s"], "fps": v["fps"], "frames": len(v["frame_times_s"]),
            "shots": len(v["shot_starts"]), "shot_starts_s": v["shot_starts_s"],
            "frames_per_shot": [v["frame_shot"].count(k) for k in range(len(v["shot_starts"]))],
            "damaged_packets": v.get("damaged_packets", 0)}


def _totals(plan: dict, shards_done: int, videos: int, failed: int, shots: int, frames: int) -> dict:
    per_shard = plan["config"]["videos_per_shard"]
    num_shards = (len(plan["inputs"]) + per_shard - 1) // per_shard
    return {"version": PLAN_VERSION, "complete": shards_done == num_shards, "shards_planned": num_shards,
            "shards_done": shards_done, "videos_planned": len(plan["inputs"]), "videos": videos, "failed": failed,
            "shots": shots, "frames": frames}


def _manifest(plan: dict, done: list[dict]) -> dict:
    """The manifest of a dataset planned as ``plan`` whose complete shards have the indices ``done``."""
    per_video = [_video_row(shard_index, v) for shard_index in done for v in shard_index["videos"]]
    failures = [f for shard_index in done for f in shard_index["failures"]]
    return {**_totals(plan, len(done), len(per_video), len(failures), sum(v["shots"] for v in per_video),
                      sum(v["frames"] for v in per_video)), "per_video": per_video, "failures": failures}


class _ManifestWriter:
    """The manifest and failures of the complete shards, written one shard index at a time: the
    per-video rows go to a scratch file as they come (a million videos are never all in memory),
    the totals are kept, and :meth:`files` gives the two files, laid out as ``json_bytes`` lays
    out the whole manifest."""

    def __init__(self, plan: dict, min_shots: int) -> None:
        self.plan, self.min_shots = plan, min_shots
        self.rows = tempfile.TemporaryFile("w+", prefix="vivi-manifest-")
        self.failures = tempfile.TemporaryFile("w+", prefix="vivi-failures-")
        self.shards: list[str] = []
        self.videos = self.shots = self.frames = self.few_shots = self.damaged = 0
        self.reasons: Counter = Counter()

    def add(self, shard_index: dict) -> None:
        self.shards.append(shard_index["shard"])
        for v in shard_index["videos"]:
            row = _video_row(shard_index, v)
            text = json.dumps(row, indent=1).replace("\n", "\n  ")
            self.rows.write(("[\n  " if not self.videos else ",\n  ") + text)
            self.videos += 1
            self.shots, self.frames = self.shots + row["shots"], self.frames + row["frames"]
            self.few_shots += row["shots"] < self.min_shots
            self.damaged += row["damaged_packets"] > 0
        for failure in shard_index["failures"]:
            self.failures.write(json.dumps(failure) + "\n")
            self.reasons[_reason_kind(failure["reason"])] += 1

    @property
    def totals(self) -> dict:
        return _totals(self.plan, len(self.shards), self.videos, sum(self.reasons.values()), self.shots, self.frames)

    def write(self, manifest: Path, failures: Path) -> None:
        """Write ``manifest.json`` and ``failures.jsonl`` to the local files ``manifest``, ``failures``."""
        head = json.dumps({**self.totals, "per_video": []}, indent=1)
        self.rows.seek(0)
        self.failures.seek(0)
        with open(manifest, "w") as out:
            if not self.videos:
                out.write(head + "\n")
            else:
                out.write(head[:-len("[]\n}")])
                while chunk := self.rows.read(1 << 20):
                    out.write(chunk)
                out.write("\n ]\n}\n")
        with open(failures, "w") as out:
            while chunk := self.failures.read(1 << 20):
                out.write(chunk)

    def close(self) -> None:
        self.rows.close()
        self.failures.close()


def _with_staged(indices: Iterable[dict], staged: dict | None) -> Iterator[dict]:
    """The shard indices ``indices`` (in shard order) with the index ``staged`` of a shard not yet
    in place put in its order (in place of its old version, for a shard made again)."""
    for shard_index in indices:
        if staged is not None and staged["shard"] <= shard_index["shard"]:
            yield staged
            if staged["shard"] == shard_index["shard"]:
                staged = None
                continue
            staged = None
        yield shard_index
    if staged is not None:
        yield staged


def finalize(out: str | Path, min_shots: int = IngestConfig.min_shots) -> IngestSummary:
    """Rebuild ``manifest.json`` and ``failures.jsonl`` from the complete shards of ``out``."""
    out = location(out)
    return _finalize(out, _read_plan(out), None, [], min_shots)


def _finalize(out: Path | str, plan: dict, staged: dict | None, renames: list, min_shots: int) -> IngestSummary:
    """Write the manifest of the complete shards, in one durable round after ``renames``: files
    already written under temporary names (ingest's last shard, whose index is ``staged``, a new
    plan), which the manifest counts as in place. The shard indices are read one at a time."""
    # Parts running side by side (--part) each write the manifest at their end: one that read the
    # complete shards before another part's last one was in place writes again, so the manifest
    # written last counts every shard (its writer saw no shard appear after writing it). Cheap
    # when nothing changed: the shard indices in place are listed, not read.
    previous = None
    while True:
        writer = _ManifestWriter(plan, min_shots)
        try:
            for shard_index in _with_staged(shards.iter_completed_shard_indices(out), staged):
                writer.add(shard_index)
            _write_manifest(out, writer, renames)
        finally:
            writer.close()
        used = set(writer.shards)
        if shards.complete_shard_names(out) == used or writer.shards == previous:
            break                                   # (a damaged shard's index may be in place: named, left out)
        previous, staged, renames = writer.shards, None, []
    totals = writer.totals
    if totals["complete"]:
        # The columnar index, from the shard indices in place; written again if another part's
        # shard appeared meanwhile, so that the index written last covers every shard.
        while True:
            write_index(out)
            if shards.complete_shard_names(out) == used:
                break
            used = shards.complete_shard_names(out)
    return IngestSummary(
        out=out, videos_planned=totals["videos_planned"], shards_planned=totals["shards_planned"],
        shards_done=totals["shards_done"], shards_written=0, shards_skipped=0, videos=totals["videos"],
        failed=totals["failed"], shots=totals["shots"], frames=totals["frames"], few_shots=writer.few_shots,
        min_shots=min_shots, damaged=writer.damaged, complete=totals["complete"], seconds=0.0,
        failure_reasons=dict(writer.reasons))


def _write_manifest(out: Path | str, writer: _ManifestWriter, renames: list) -> None:
    """Put the manifest and failures of ``writer`` in place, with ``renames`` in the same round."""
    if is_url(out):
        with tempfile.TemporaryDirectory(prefix="vivi-manifest-") as folder:
            manifest, failures = Path(folder) / "manifest.json", Path(folder) / "failures.jsonl"
            writer.write(manifest, failures)
            upload(manifest, join(out, "manifest.json"))
            upload(failures, join(out, "failures.jsonl"))
        return
    staged = [(shards.shared_tmp_name(out / name), out / name) for name in ("manifest.json", "failures.jsonl")]
    with shards.unstaged_on_error(staged):
        writer.write(staged[0][0], staged[1][0])
        shards.replace_durably(renames + staged)


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


def parse_part(text: str, environment: dict[str, str] | None = None) -> tuple[int, int]:
    """'i/n' -> (i, n); 'slurm' -> this task's part of a Slurm job array (``sbatch --array``):
    ``SLURM_ARRAY_TASK_ID`` (less ``SLURM_ARRAY_TASK_MIN``) of ``SLURM_ARRAY_TASK_COUNT``."""
    if text == "slurm":
        return _slurm_part(os.environ if environment is None else environment)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part {text!r} is not of the form i/n (e.g. 0/4) or slurm") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--part {text}: need 0 <= i < n")
    return i, n


def _slurm_part(environment: dict[str, str]) -> tuple[int, int]:
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    if not all(environment.get(name) for name in names):
        raise ValueError("--part slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set; run it inside a "
                         "job array (sbatch --array=0-15 ...) or give the part as i/n")
    try:
        task, count, first = (int(environment.get(name, "0")) for name in (*names, "SLURM_ARRAY_TASK_MIN"))
    except ValueError:
        raise ValueError("--part slurm: SLURM_ARRAY_TASK_ID, _COUNT and _MIN must be integers") from None
    i = task - first
    if not (count >= 1 and 0 <= i < count):
        raise ValueError(f"--part slurm: array task {task} (first {first}) of {count} is not a part 0..{count - 1}: "
                         "number the array's tasks consecutively (--array=0-15, not a step or a list)")
    return i, count


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
