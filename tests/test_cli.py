"""The `vivi` command: thin subcommands over the library, clear errors on bad input."""
from __future__ import annotations

import csv
import json
import subprocess
import sys


def vivi(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "vivi.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_synth_ingest_inspect(tmp_path):
    vivi("synth", tmp_path / "world", "--videos", 3, "--seconds", 5, "--no-tasks", "--workers", 1)
    assert len(list((tmp_path / "world" / "videos").glob("*.mp4"))) == 3
    for part in ("0/2", "1/2"):
        out = vivi("ingest", tmp_path / "world" / "videos", "--out", tmp_path / "data", "--short-side", 64,
                   "--videos-per-shard", 1, "--part", part, "--workers", 1)
    assert "3 videos" in out.stdout
    stats = json.loads(vivi("inspect", tmp_path / "data", "--json", "--render", tmp_path / "sheet.png").stdout)
    assert stats["videos"] == 3 and stats["complete"]
    assert (tmp_path / "sheet.png").stat().st_size > 0


def test_errors_name_the_problem_and_the_fix(tmp_path):
    result = vivi("ingest", tmp_path / "missing", "--out", tmp_path / "data", check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = vivi("ingest", tmp_path, "--out", tmp_path / "data", "--part", "3/2", check=False)
    assert result.returncode == 2 and "part" in result.stderr
    result = vivi("inspect", tmp_path, check=False)
    assert result.returncode == 2 and "vivi ingest" in result.stderr
    result = vivi("ingest", check=False)
    assert result.returncode == 2 and "usage" in result.stderr


def test_demo_flags_are_checked_before_anything_is_written(tmp_path):
    result = vivi("demo", "--out", tmp_path / "demo", "--methods", "vivi-ex5", check=False)
    assert result.returncode == 2 and "unknown demo method" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()
    result = vivi("demo", "--quick", "--full", check=False)
    assert result.returncode == 2 and "not allowed with" in result.stderr
    for flag, value, words in (("--seeds", 0, "--seeds 0"), ("--steps", -1, "--steps -1"),
                               ("--workers", 0, "--workers")):
        result = vivi("demo", "--quick", "--out", tmp_path / "demo", flag, value, check=False)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "demo").exists()


def test_a_file_where_a_folder_goes_and_a_full_disk_are_named(world, tmp_path):
    import errno

    from vivi.cli import _file_system_error
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for args in (("synth", blocker, "--videos", 1, "--no-tasks"),
                 ("ingest", world / "videos", "--out", blocker / "data")):
        result = vivi(*args, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"{blocker} is a file where a folder is needed" in result.stderr
    assert blocker.read_text() == "not a folder"
    full = _file_system_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("no space left on the device") and "run the command again" in full


def test_inspect_cuts_writes_the_stats_and_the_plot(world, tmp_path, capsys):
    """`vivi inspect --cuts` writes a CSV row per native frame whose cuts are the ground truth's,
    passes --cut-threshold and --min-shot-frames to the detector, and draws a PNG."""
    from vivi.cli import main
    from vivi.ingest import CutDetectorConfig, SamplingConfig, cut_stats
    videos = sorted((world / "videos").glob("*.mp4"))[:2]
    stats, plot = tmp_path / "cuts.csv", tmp_path / "plots" / "cuts.png"
    assert main(["inspect", "--cuts", *map(str, videos), "--stats", str(stats), "--plot", str(plot)]) == 0
    with open(stats, newline="") as f:
        rows = list(csv.DictReader(f))
    for video in videos:
        truth = json.loads(video.with_suffix(".json").read_text())
        mine = [r for r in rows if r["video"] == str(video)]
        assert len(mine) == truth["num_frames"]
        assert [int(r["frame"]) for r in mine if r["cut"] == "1"] == truth["shot_starts"][1:]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{len(rows)} frames of 2 video(s)" in capsys.readouterr().out
    # other settings reach the detector: a low threshold with long shots gives other cuts
    assert main(["inspect", "--cuts", str(videos[0]), "--stats", str(stats), "--cut-threshold", "0.05",
                 "--min-shot-frames", "30"]) == 0
    with open(stats, newline="") as f:
        cuts = [int(r["frame"]) for r in csv.DictReader(f) if r["cut"] == "1"]
    config = SamplingConfig(cuts=CutDetectorConfig(threshold=0.05, min_shot_frames=30))
    assert cuts == [r.frame for r in cut_stats([videos[0]], config) if r.cut]
    assert cuts != json.loads(videos[0].with_suffix(".json").read_text())["shot_starts"][1:]


def test_inspect_cuts_errors_are_one_line_naming_the_file(world, dataset, tmp_path, capsys):
    from vivi.cli import main
    video = sorted((world / "videos").glob("*.mp4"))[0]
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    stats = tmp_path / "cuts.csv"
    cases = [(["--cuts", str(video), str(tmp_path / "missing.mp4")], f"{tmp_path / 'missing.mp4'}: file not found"),
             (["--cuts", str(tmp_path / "notes.mp4")], f"{tmp_path / 'notes.mp4'}: not a readable video"),
             (["--cuts", str(video), "--plot", str(tmp_path / "cuts.jpg")], f"{tmp_path / 'cuts.jpg'}: a plot is"),
             (["--cuts", str(video), "--cut-threshold", "1.5"], "cut detector settings out of range")]
    for args, words in cases:
        assert main(["inspect", *args, "--stats", str(stats)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vivi inspect: error: ") and words in err and err.count("\n") == 1, err
        assert not stats.exists()
    for args, words in ((["inspect"], "give a dataset folder (DATA) or --cuts"),
                        (["inspect", str(dataset), "--cuts", str(video), "--stats", str(stats)], "not a dataset"),
                        (["inspect", "--cuts", str(video)], "needs --stats"),
                        (["inspect", str(dataset), "--stats", str(stats)], "go with --cuts")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert not stats.exists()


def test_embed_takes_any_file_name_and_lists_it_so_that_it_reads_back(tmp_path):
    """A name that is not UTF-8 crashed OpenCV's imread (exit 139), and a newline in a name split
    its line of the listing: every name must be embedded and read back from OUT.files.jsonl as the
    same bytes, row i the embedding of the file on line i."""
    import os

    import cv2
    import numpy as np
    import torch

    from vivi.api import embed, load_encoder
    from vivi.models.resnet_v2 import create_encoder
    from vivi.train.checkpoint import ENCODER_KIND
    encoder = tmp_path / "encoder.pt"
    torch.save({"kind": ENCODER_KIND, "encoder": json.dumps({"name": "resnet_tiny_v2", "overrides": {}}),
                "config": json.dumps({"augment": {"size": 32}}),
                "state_dict": create_encoder("resnet_tiny_v2").state_dict()}, encoder)
    folder = os.fsencode(tmp_path / "images")
    os.mkdir(folder)
    rng = np.random.default_rng(0)
    names = [os.path.join(folder, name) for name in (b"plain.png", b"caf\xe9.png", b"two\nlines.png")]
    for name in names:
        with open(name, "wb") as f:
            f.write(cv2.imencode(".png", rng.integers(0, 255, (40, 40, 3), np.uint8))[1].tobytes())
    result = vivi("embed", "--checkpoint", encoder, tmp_path / "images", "--out", tmp_path / "emb")
    assert "3 embeddings" in result.stdout and result.stderr == "", result.stderr
    lines = (tmp_path / "emb.files.jsonl").read_text().splitlines()
    rows = [os.fsencode(json.loads(line)) for line in lines]
    assert sorted(rows) == sorted(names)
    model = load_encoder(encoder)
    expected = embed(model, [os.fsdecode(row) for row in rows])
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), expected, rtol=1e-5, atol=1e-5)


def test_embed_takes_a_random_encoder_and_names_a_truncated_jpeg_it_skips(tmp_path):
    """`vivi embed --checkpoint random:NAME` (as `vivi eval` takes it) embeds with a randomly initialised
    encoder; a JPEG cut short by an interrupted copy is skipped and named on stderr, the others embedded."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.jpg"), rng.integers(0, 255, (48, 48, 3), np.uint8))
    whole = cv2.imencode(".jpg", rng.integers(0, 255, (200, 200, 3), np.uint8))[1].tobytes()
    (folder / "cut.jpg").write_bytes(whole[: int(len(whole) * 0.9)])
    result = vivi("embed", "--checkpoint", "random:resnet_tiny_v2", folder, "--out", tmp_path / "emb")
    assert result.returncode == 0 and "2 embeddings of size 512" in result.stdout, result.stderr
    assert "skipped 1 file" in result.stderr and str(folder / "cut.jpg") in result.stderr
    assert np.load(tmp_path / "emb.npy").shape == (2, 512)


def test_version():
    from vivi import __version__
    result = vivi("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vivi {__version__}"
