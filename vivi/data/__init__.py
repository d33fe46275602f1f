"""Reading ingested datasets for training: videos, shots, frames and their boxes."""
from .boxes import Detections, available_detectors, load_detections
from .clips import ClipConfig, VideoClipDataset, VideoSampler, iterate_videos, make_loader
from .reader import Video, VideoDataset

__all__ = ["ClipConfig", "Detections", "Video", "VideoClipDataset", "VideoDataset", "VideoSampler",
           "available_detectors", "iterate_videos", "load_detections", "make_loader"]
