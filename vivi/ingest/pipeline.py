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
"""
from __future__ import annotations

import json
import multiprocessing
import os
import posixpath
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..files import refuse_other_settings
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
    found: set[Path] = set()
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
            found.add(path.resolve())
        else:
            raise FileNotFoundError(f"input {item!s} does not exist: pass video files, folders of videos, "
                                    "or a .txt file listing video paths")
    return [*sorted(found), *sorted(urls)]


def _add_listed(text: str, base: Path | str, found: set[Path], urls: set[str]) -> None:
    """The entries of a list file in the folder (or at the URL prefix) ``base``."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if is_url(line) or (is_url(base) and not line.startswith(("/", "~"))):
            _add_url(line if is_url(line) else _relative_url(base, line), found, urls, listed=True)
            continue
        listed = Path(line).expanduser()
        listed = listed if listed.is_absolute() else base / listed
        found.update(_videos_under(listed) if listed.is_dir() else [listed.resolve()])


def _relative_url(base: str, line: str) -> str:
    """The URL of ``line`` relative to the prefix ``base`` (``..`` resolved: object keys are literal)."""
    scheme, _, rest = join(base, line).partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}"


def _add_url(url: str, found: set[Path], urls: set[str], listed: bool = False) -> None:
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


def _videos_under(folder: Path) -> set[Path]:
    """Video files in ``folder`` and its sub-folders, symbolic links to folders followed (each
    real folder once, so a link loop ends)."""
    found, seen = set(), set()
    for parent, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        found.update(Path(parent, name).resolve() for name in files
                     if Path(name).suffix.lower() in VIDEO_EXTENSIONS and os.path.isfile(os.path.join(parent, name)))
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
    return refuse_other_settings(path, plan, holds="a dataset", describe=lambda k, then, now: {
        "inputs": "the input videos", "config": "the ingest settings"}.get(k, k),
        fix="pass a new --out folder (or delete this one) to ingest a different collection")


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
    return index, record, video.jpegs, None


def ingest(inputs: list[str | Path], out: str | Path, config: IngestConfig = IngestConfig(), *,
           workers: int = 1, part: tuple[int, int] = (0, 1), progress: bool = True,
           retry_failed: bool = False) -> IngestSummary:
    """Ingest the videos named by ``inputs`` into the dataset folder ``out`` (see module docstring).

    Resumable: complete shards are kept and skipped. ``workers`` processes decode videos in
    parallel; ``part=(i, n)`` processes only the i-th of n disjoint parts of the plan.
    ``retry_failed``: complete shards that hold failed videos are made again (after the files were
    repaired or replaced); their detections, if any, are dropped for ``vivi detect`` to redo.
    ``inputs`` and ``out`` may be URLs of object storage (module docstring).
    """
    start = time.perf_counter()
    out = location(out)
    remote = is_url(out)
    part_index, part_count = part
    if not (part_count >= 1 and 0 <= part_index < part_count):
        raise ValueError(f"part {part_index}/{part_count} is not valid: use i/n with 0 <= i < n")
    sources = [str(p) for p in expand_inputs(inputs)]
    if not sources:
        raise ValueError(f"no video files found in {', '.join(map(str, inputs))} "
                         f"(extensions looked for: {' '.join(sorted(VIDEO_EXTENSIONS))})")
    plan = {"version": PLAN_VERSION, "config": asdict(config), "inputs": sources}
    unwritten = _check_plan(out, plan)

    per_shard = config.videos_per_shard
    num_shards = (len(sources) + per_shard - 1) // per_shard
    mine = [j for j in range(num_shards) if j % part_count == part_index]
    done = shards.read_shard_indices(out, mine)
    todo = [j for j in mine if done[j] is None or (retry_failed and done[j]["failures"])]
    if todo:     # shards change: an index would name their old offsets (written again once complete)
        remove(join(out, INDEX_FILE))
    _drop_detections(out, [j for j in todo if done[j] is not None])
    # With a process per core, FFmpeg's own threads only add overhead.
    threads = 1 if workers >= (os.cpu_count() or 1) else 0
    jobs = [(i, sources[i], config.sampling, threads)
            for j in todo for i in range(j * per_shard, min((j + 1) * per_shard, len(sources)))]

    bar = tqdm(total=len(jobs), unit="video", desc=f"ingest {name_of(out)}", disable=not progress, dynamic_ncols=True)
    native_frames = 0
    pending: dict[int, list] = {j: [] for j in todo}
    results = _run_jobs(jobs, workers) if workers > 1 else map(_ingest_one, jobs)
    last = None       # the run's last shard: staged, put in place in the manifest's round (a local folder)
    try:
        for index, record, jpegs, reason in results:
            j = index // per_shard
            pending[j].append((index, record, jpegs, reason))
            if record is not None:
                native_frames += record["num_native_frames"]
            bar.update(1)
            bar.set_postfix_str(f"{native_frames / max(bar.format_dict['elapsed'], 1e-9):.0f} frames/s decoded",
                                refresh=False)
            if len(pending[j]) == min((j + 1) * per_shard, len(sources)) - j * per_shard:
                if remote:
                    shards.upload_shard(out, *_shard_contents(j, sorted(pending.pop(j), key=lambda r: r[0]), sources))
                    continue
                shard_index, renames = _stage_shard(out, j, sorted(pending.pop(j), key=lambda r: r[0]), sources)
                renames = shards.stage_files(unwritten) + renames
                unwritten = []
                if pending:   # in place now: a shard is the unit of resumption
                    shards.replace_durably(renames)
                else:
                    last = shard_index, renames
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    complete = shards.completed_shard_indices(out)
    renames = shards.stage_files(unwritten)
    if last is not None:
        # (a retried shard is complete on disk already, in its old version: the new one replaces it)
        complete = sorted([c for c in complete if c["shard"] != last[0]["shard"]] + [last[0]],
                          key=lambda index: index["shard"])
        renames += last[1]
    summary = _finalize(out, plan, complete, renames, config.min_shots)
    summary.shards_written, summary.shards_skipped = len(todo), len(mine) - len(todo)
    summary.seconds = time.perf_counter() - start
    return summary


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


def _run_jobs(jobs: list, workers: int, work=_ingest_one):
    """Results of ``work`` (``_ingest_one``) over ``jobs`` in order, from ``workers`` processes.

    At most ``4 * workers`` videos are in flight, so memory stays bounded. A worker that dies
    (FFmpeg crashing on a corrupt file, say) breaks the pool: the videos in flight are then
    retried one at a time in a fresh process each, the one that crashes again is reported as a
    failure, and a new pool takes the rest.
    """
    context = multiprocessing.get_context("forkserver")   # clean workers, safe if the caller has threads
    context.set_forkserver_preload(["vivi.ingest.pipeline"])   # imported once, workers start fast
    position = 0
    while position < len(jobs):
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                   initargs=(dict(os.environ),))
        window: deque = deque()
        try:
            while position < len(jobs) or window:
                while position < len(jobs) and len(window) < 4 * workers:
                    window.append((jobs[position], pool.submit(work, jobs[position])))
                    position += 1
                job, future = window[0]
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
        for job, _ in window:   # the pool broke: isolate the culprit
            yield _run_isolated(work, job, context)


def _run_isolated(work, job, context):
    with ProcessPoolExecutor(1, mp_context=context, initializer=_worker_init,
                             initargs=(dict(os.environ),)) as pool:
        try:
            return pool.submit(work, job).result()
        except BrokenProcessPool:
            return job[0], None, [], "the decoding process crashed on this file (corrupt or unsupported video)"


def _worker_init(environment: dict[str, str] | None = None) -> None:
    import cv2
    cv2.setNumThreads(1)   # one process per core already; OpenCV's own threads would oversubscribe
    if environment is not None:
        # The caller's environment now (the object store's endpoint and credentials): workers are
        # forked from a server process that may have started before the caller set them.
        os.environ.clear()
        os.environ.update(environment)


def _shard_contents(j: int, results: list, sources: list[str]) -> tuple[int, list, list]:
    """(j, samples, failures) of shard j, for :func:`shards.stage_shard` and :func:`shards.upload_shard`."""
    samples = [(record, jpegs) for _, record, jpegs, _ in results if record is not None]
    failures = [{"key": shards.video_key(index), "source": sources[index], "reason": reason}
                for index, record, _, reason in results if record is None]
    return j, samples, failures


def _stage_shard(out: Path, j: int, results: list, sources: list[str]) -> tuple[dict, list]:
    return shards.stage_shard(out, *_shard_contents(j, results, sources))


def collect(out: str | Path) -> dict:
    """The manifest of the dataset at ``out``, read from its complete shards (writes nothing)."""
    out = location(out)
    return _manifest(_read_plan(out), shards.completed_shard_indices(out))


def _read_plan(out: Path | str) -> dict:
    shards.require_dataset(out)
    return json.loads(read_bytes(join(out, "plan.json")))


def _manifest(plan: dict, done: list[dict]) -> dict:
    """The manifest of a dataset planned as ``plan`` whose complete shards have the indices ``done``."""
    per_shard = plan["config"]["videos_per_shard"]
    per_video, failures = [], []
    for shard_index in done:
        for v in shard_index["videos"]:
            per_video.append({"key": v["key"], "source": v["source"], "shard": shard_index["shard"],
                              "duration_s": v["duration_s"], "fps": v["fps"], "frames": len(v["frame_times_s"]),
                              "shots": len(v["shot_starts"]), "shot_starts_s": v["shot_starts_s"],
                              "frames_per_shot": [v["frame_shot"].count(k) for k in range(len(v["shot_starts"]))],
                              "damaged_packets": v.get("damaged_packets", 0)})
        failures.extend(shard_index["failures"])
    num_shards = (len(plan["inputs"]) + per_shard - 1) // per_shard
    return {
        "version": PLAN_VERSION, "complete": len(done) == num_shards,
        "shards_planned": num_shards, "shards_done": len(done), "videos_planned": len(plan["inputs"]),
        "videos": len(per_video), "failed": len(failures),
        "shots": sum(v["shots"] for v in per_video), "frames": sum(v["frames"] for v in per_video),
        "per_video": per_video, "failures": failures,
    }


def finalize(out: str | Path, min_shots: int = IngestConfig.min_shots) -> IngestSummary:
    """Rebuild ``manifest.json`` and ``failures.jsonl`` from the complete shards of ``out``."""
    out = location(out)
    return _finalize(out, _read_plan(out), shards.completed_shard_indices(out), [], min_shots)


def _finalize(out: Path | str, plan: dict, complete: list[dict], renames: list, min_shots: int) -> IngestSummary:
    """Write the manifest of the shards ``complete``, in one durable round after ``renames``:
    files already written under temporary names (ingest's last shard, a new plan), which the
    manifest counts as in place."""
    # Parts running side by side (--part) each write the manifest at their end: one that read the
    # complete shards before another part's last one was in place writes again, so the manifest
    # written last counts every shard (its writer saw no shard appear after writing it). Cheap
    # when nothing changed: the shard indices in place are listed, not read.
    checked = {index["shard"] for index in complete}
    while True:
        manifest = _manifest(plan, complete)
        failures = manifest.pop("failures")
        files = [(join(out, "manifest.json"), shards.json_bytes(manifest)),
                 (join(out, "failures.jsonl"), "".join(json.dumps(f) + "\n" for f in failures).encode())]
        if is_url(out):
            for path, data in files:
                write_bytes(path, data)
        else:
            shards.replace_durably(renames + shards.stage_files(files))
        names = shards.complete_shard_names(out)
        if names == checked:
            break
        checked = names
        fresh = shards.completed_shard_indices(out)     # (a damaged shard's index may be in place)
        if [index["shard"] for index in fresh] == [index["shard"] for index in complete]:
            break
        complete, renames = fresh, []
    if manifest["complete"]:
        # The columnar index, from the shard indices in hand; written again if another part's
        # shard appeared meanwhile, so that the index written last covers every shard.
        while True:
            write_index(out, complete)
            if shards.complete_shard_names(out) == {shard_index["shard"] for shard_index in complete}:
                break
            complete = shards.completed_shard_indices(out)
    return IngestSummary(
        out=out, videos_planned=manifest["videos_planned"], shards_planned=manifest["shards_planned"],
        shards_done=manifest["shards_done"], shards_written=0, shards_skipped=0, videos=manifest["videos"],
        failed=len(failures), shots=manifest["shots"], frames=manifest["frames"],
        few_shots=sum(v["shots"] < min_shots for v in manifest["per_video"]), min_shots=min_shots,
        damaged=sum(v["damaged_packets"] > 0 for v in manifest["per_video"]),
        complete=manifest["complete"], seconds=0.0,
        failure_reasons=dict(Counter(_reason_kind(f["reason"]) for f in failures)))


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


def parse_part(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part {text!r} is not of the form i/n (e.g. 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--part {text}: need 0 <= i < n")
    return i, n


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
