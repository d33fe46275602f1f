"""A stand-in for a decoder that crashes its process on one file (tests/test_ingest.py)."""
import os

from vivi.ingest.pipeline import _ingest_one


def crash_on_bad(job):
    if job[1].endswith("crash.mp4"):
        os._exit(11)          # like a segfault inside FFmpeg: no exception, the process is gone
    return _ingest_one(job)
