"""`vivi demo` end to end at the smallest scale: every stage leaves its outputs."""
from __future__ import annotations

import json

from vivi.demo import run_demo


def test_demo_produces_every_stage(tmp_path):
    result = run_demo(tmp_path, quick=True, workers=2, videos=4, seconds=6.0)
    assert (tmp_path / "world" / "world.json").exists()
    assert (tmp_path / "world" / "tasks" / "suite.json").exists()
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["videos"] == 4
    assert (tmp_path / "report" / "contact_sheet.png").stat().st_size > 0
    assert (tmp_path / "data" / "detections" / "groundtruth" / "detector.json").exists()
    assert result["stats"]["videos"] == 4
    again = run_demo(tmp_path, quick=True, workers=2, videos=4, seconds=6.0)    # resumes: nothing redone
    assert again["stats"] == result["stats"]
