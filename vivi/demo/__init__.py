"""``vivi demo``: synth -> ingest -> detect -> train the papers' methods -> evaluate -> report,
on the synthetic world, on a laptop CPU (``stages.py``); the methods and sizes are in ``methods.py``."""
from __future__ import annotations

from .methods import METHODS, SCALES, Method, Scale, select_methods
from .stages import demo_scale, run_demo

__all__ = ["METHODS", "SCALES", "Method", "Scale", "demo_scale", "run_demo", "select_methods"]
