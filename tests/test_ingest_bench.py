"""bench/ingest_throughput.py at toy sizes: the benchmark still runs, and its border-pass clock
still times the functions that find and cut off bars (a renamed one would make it fail or count
nothing)."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import ingest_throughput  # noqa: E402


def test_the_benchmark_prints_every_figure_on_letterboxed_videos(tmp_path):
    result = subprocess.run([sys.executable, "bench/ingest_throughput.py", "--sizes", "48", "--videos", "2",
                             "--seconds", "3", "--reps", "1", "--bars", "0.125"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for line in ("vivi / bare decode", "vivi / two-pass script", "border pass: finding the bars",
                 "a stored frame takes", "border pass, net"):
        assert line in out, out
    shares = re.search(r"finding the bars = ([\d.]+) %.* stored frames = ([\d.]+) %", out)
    finding, cutting = map(float, shares.groups())
    assert finding > 0 and cutting > 0, out       # the clock saw the bars found and cut off


def test_the_border_clock_times_the_border_functions_and_puts_them_back(world, tmp_path):
    from vivi.ingest import IngestConfig, SamplingConfig
    originals = [getattr(owner, name) for owner, name in ingest_throughput.BorderClock.FINDING]
    videos = sorted((world / "videos").glob("*.mp4"))[:2]
    barred = ingest_throughput.add_bars(videos, 0.125, "ultrafast", tmp_path / "barred")
    config = IngestConfig(sampling=SamplingConfig(short_side=64))
    finding, cutting, stored = ingest_throughput.border_shares(barred, config, tmp_path / "data")
    assert 0 < finding < 1 and 0 < cutting < 1 and stored > 0
    assert [getattr(owner, name) for owner, name in ingest_throughput.BorderClock.FINDING] == originals
    with_cut, with_bars = ingest_throughput.stored_frame_seconds(barred, 64, per_video=2, tries=1)
    assert with_cut > 0 and with_bars > 0


def test_the_border_clock_times_every_way_into_the_border_code(world, tmp_path):
    """Ingest calls the border code (vivi/ingest/borders.py and the cut detector's regions) only
    through functions the clock times: a new way in would go uncounted."""
    from vivi.ingest import IngestConfig, SamplingConfig, borders, cut_detector, ingest
    regions = {f.__code__ for f in vars(cut_detector._Regions).values() if inspect.isfunction(f)}

    def in_border_code(code) -> bool:
        return code.co_filename == borders.__file__ or code in regions

    videos = sorted((world / "videos").glob("*.mp4"))[:3]
    barred = ingest_throughput.add_bars(videos[:2], 0.125, "ultrafast", tmp_path / "barred")
    entries = set()

    def profile(frame, event, arg):
        if event == "call" and in_border_code(frame.f_code) and not in_border_code(frame.f_back.f_code):
            entries.add(frame.f_code)

    sys.setprofile(profile)
    try:
        ingest(barred + videos[2:], tmp_path / "data", IngestConfig(sampling=SamplingConfig(short_side=64)),
               workers=1, progress=False)
    finally:
        sys.setprofile(None)
    timed = {getattr(owner, name).__code__
             for owner, name in ingest_throughput.BorderClock.FINDING + ingest_throughput.BorderClock.CUTTING}
    assert entries and entries <= timed, [f"{code.co_name} ({code.co_firstlineno})" for code in entries - timed]
