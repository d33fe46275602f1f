"""`vivi objects` (Object-centric Table 2): one same-video rule for the library and the command, and
frames read at the encoder's training size."""
from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

from vivi.cli import build_parser, main
from vivi.eval import compare_object_metric, object_nn_metric
from vivi.eval.objects import collect_object_features, input_size
from vivi.eval.transfer import load_eval_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def boxed(dataset, tmp_path_factory) -> Path:
    from vivi.detect import build_detector, detect_dataset
    data = tmp_path_factory.mktemp("objects") / "ds"
    shutil.copytree(dataset, data)                 # the shared dataset fixture stays without detections
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    return data


def test_same_video_neighbours_are_allowed_by_default_everywhere():
    """The paper's protocol (all objects of the sampled batches, no exclusion) is the default of the
    library's two entry points and of the command; catches one of them drifting back to excluding."""
    for function in (object_nn_metric, compare_object_metric):
        assert inspect.signature(function).parameters["exclude_same_video"].default is False, function
    parse = build_parser().parse_args
    base = ["objects", "--checkpoint", "random:resnet_tiny_v2", "--data", "DATA"]
    assert parse(base).exclude_same_video is False
    assert parse(base + ["--same-video"]).exclude_same_video is False
    assert parse(base + ["--exclude-same-video"]).exclude_same_video is True


def test_frames_are_read_at_the_encoders_training_size(boxed, tmp_path):
    """The encoder sees its training size (``input_size``; 224 without one), not a fixed 64 px; an
    exported encoder trained at 48 px is measured at 48 by the command (catches the old fixed size
    and a size ignored between the command and the sampler)."""
    encoder = load_eval_encoder("random:resnet_tiny_v2")
    assert input_size(encoder) == 224
    encoder.input_size = 48
    seen = []
    forward = encoder.forward_features
    encoder.forward_features = lambda x: seen.append(tuple(x.shape[-2:])) or forward(x)
    found = collect_object_features(encoder, boxed, "groundtruth", batches=1, videos_per_batch=2, shots=1, frames=2)
    assert found["size"] == 48 and seen and set(seen) == {(48, 48)}
    from safetensors.torch import save_file
    export = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in load_eval_encoder("random:resnet_tiny_v2").state_dict().items()},
              str(export), metadata={"kind": "vivi-encoder", "config": json.dumps({"augment": {"size": 48}}),
                                     "encoder": json.dumps({"name": "resnet_tiny_v2", "overrides": {}})})
    out = tmp_path / "objects.json"
    base = ["objects", "--checkpoint", str(export), "--data", str(boxed), "--batches", "1", "--out", str(out)]
    assert main(base) == 0
    (result,) = json.loads(out.read_text())["checkpoints"].values()
    assert result["size"] == 48 and result["exclude_same_video"] is False
    assert main(base + ["--size", "32"]) == 0
    (result,) = json.loads(out.read_text())["checkpoints"].values()
    assert result["size"] == 32
