"""A synthetic video world with ground truth at every level of the hierarchy
video -> shots -> frames -> objects, and labeled still-image tasks drawn from it (docs/synth.md).

``make_world(out)`` writes H.264 videos with per-video JSON ground truth (shot cuts, object boxes
and classes per frame) and VTAB-1k-style task folders; it is the default data set of vivi and the
test data of every stage of the pipeline.
"""
from .backgrounds import BACKGROUND_FAMILIES
from .downstream import TASK_NAMES, TASKS
from .make import make_world
from .shapes import CLASS_NAMES
from .world import WorldConfig, world_overrides

__all__ = ["make_world", "WorldConfig", "CLASS_NAMES", "BACKGROUND_FAMILIES", "TASKS", "TASK_NAMES", "world_overrides"]
