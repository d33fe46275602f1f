"""Reading ingested datasets for training: videos, shots, frames and their boxes."""
from .boxes import Detections, available_detectors, load_detections
from .clips import ClipConfig, VideoClipDataset, VideoSampler, iterate_videos, make_loader
from .reader import Video, VideoDataset
from .stream import VideoStream, make_stream_loader

__all__ = ["ClipConfig", "Detections", "Video", "VideoClipDataset", "VideoDataset", "VideoSampler", "VideoStream",
           "available_detectors", "iterate_videos", "load_detections", "make_loader", "make_stream_loader"]
