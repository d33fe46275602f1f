"""`onnx:PATH` detectors on tiny ONNX graphs with known outputs, and NanoDet when it is cached."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vivi.cli import main  # noqa: E402
from vivi.data import VideoDataset, load_detections  # noqa: E402
from vivi.detect import build_detector, detect_dataset  # noqa: E402
from vivi.detect.onnx_outputs import batched_nms  # noqa: E402

BIG = 100.0     # a logit that makes its bin certain


@pytest.fixture()
def data(dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    return copy


def save_model(path, input_shape, outputs: dict[str, np.ndarray], computed=()) -> str:
    """An ONNX graph with one float image input whose outputs are the given constants (plus 0 x the
    input's mean, so the input is used), followed by ``computed`` (name, nodes, shape, type) outputs."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    infos = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value, f"{name}_const"))
        if value.dtype == np.float32:
            nodes.append(helper.make_node("Add", [f"{name}_const", "nothing"], [name]))
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_const"], [name]))
        infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    for name, more, shape, dtype in computed:
        nodes.extend(more)
        infos.append(helper.make_tensor_value_info(name, dtype, shape))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
                              infos, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


# -- gfl ---------------------------------------------------------------------------------------------------
# A 32x32 input, strides 8 and 16 (grids 4x4 and 2x2), 2 classes, 3 bins per side.
# Level 0, anchor 5 (row 1, col 1, centre 12, 12): class 1 at 0.9 and class 0 at 0.3, sides
#   left  uniform over bins 0, 1, 2         -> 1 x 8 = 8
#   top   probabilities 1/4, 1/4, 1/2       -> 1.25 x 8 = 10
#   right certain bin 2                     -> 16
#   bottom certain bin 0                    -> 0        box (4, 2, 28, 12)
# Level 0, anchor 6 (centre 20, 12): class 1 at 0.5, sides 16, 10, 8, 0 -> the same box: NMS removes it.
# Level 1, anchor 2 (row 1, col 0, centre 8, 24): class 0 at 0.7, all sides uniform -> 16 each,
#   box (-8, 8, 24, 40), clipped to the frame.
# Everything else scores 0.04, under conf 0.05.
def gfl_outputs():
    scores0, scores1 = np.full((1, 16, 2), 0.04, np.float32), np.full((1, 4, 2), 0.04, np.float32)
    dist0, dist1 = np.zeros((1, 16, 12), np.float32), np.zeros((1, 4, 12), np.float32)
    scores0[0, 5] = [0.3, 0.9]
    dist0[0, 5] = [0, 0, 0] + list(np.log([1, 1, 2])) + [0, 0, BIG] + [BIG, 0, 0]
    scores0[0, 6, 1] = 0.5
    dist0[0, 6] = [0, 0, BIG] + list(np.log([1, 1, 2])) + [0, BIG, 0] + [BIG, 0, 0]
    scores1[0, 2, 0] = 0.7
    return scores0, dist0, scores1, dist1


EXPECTED_GFL = np.array([[4, 2, 28, 12, 1, 0.9], [-8, 8, 24, 40, 0, 0.7], [4, 2, 28, 12, 0, 0.3]], np.float32)


def expected_in_frame(boxes_net: np.ndarray, net: int = 32) -> np.ndarray:
    """A square frame letterboxed into a square input fills it: coordinates are net pixels / net size."""
    out = boxes_net.copy()
    out[:, :4] = np.clip(out[:, :4] / net, 0, 1)
    return out


@pytest.fixture()
def gfl_model(tmp_path):
    s0, d0, s1, d1 = gfl_outputs()
    # outputs deliberately not in level order: they are matched by shape
    return save_model(tmp_path / "gfl.onnx", [1, 3, 32, 32], {"d1": d1, "s0": s0, "s1": s1, "d0": d0})


@pytest.fixture()
def names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("cat\ndog\n\n")
    return path


def test_gfl_decode_matches_hand_computed_boxes(gfl_model, names, data):
    spec = f"onnx:{gfl_model}?convention=gfl&classes={names}&strides=8,16"
    detector = build_detector(spec)
    assert detector.name == "gfl" and detector.class_names == ["cat", "dog"] and detector.size == (32, 32)
    found = detector.detect_images([np.zeros((64, 64, 3), np.uint8)])[0]
    np.testing.assert_allclose(found, expected_in_frame(EXPECTED_GFL), atol=1e-5)
    summary = detect_dataset(data, detector, progress=False)                      # end to end, read back
    video = VideoDataset(data).videos[0]
    assert summary.frames == sum(v.num_frames for v in VideoDataset(data).videos)
    stored = load_detections(data, "gfl")
    np.testing.assert_allclose(stored.frame_boxes(video.key, 0), expected_in_frame(EXPECTED_GFL), atol=1e-5)
    assert stored.meta["settings"]["convention"] == "gfl" and stored.class_names == ["cat", "dog"]
    again = detect_dataset(data, build_detector(spec, threads=1), progress=False)   # resumes: same settings
    assert again.shards_written == 0 and again.shards_skipped == summary.shards_written


def test_gfl_with_all_levels_in_one_output(tmp_path, names):
    s0, d0, s1, d1 = gfl_outputs()
    joined = np.concatenate([np.concatenate([s0, d0], 2), np.concatenate([s1, d1], 2)], 1)     # (1, 20, 2 + 12)
    path = save_model(tmp_path / "joined.onnx", [1, 3, 32, 32], {"out": joined})
    detector = build_detector(f"onnx:{path}?convention=gfl&classes={names}&strides=8,16&name=plus")
    found = detector.detect_images([np.zeros((64, 64, 3), np.uint8)])[0]
    np.testing.assert_allclose(found, expected_in_frame(EXPECTED_GFL), atol=1e-5)
    assert detector.name == "plus"


def test_gfl_logits_and_letterbox_of_a_wide_frame(tmp_path, names):
    s0, d0, s1, d1 = gfl_outputs()
    logit = lambda p: np.log(p / (1 - p)).astype(np.float32)                     # noqa: E731
    path = save_model(tmp_path / "logits.onnx", [1, 3, 32, 32], {"s0": logit(s0), "d0": d0, "s1": logit(s1), "d1": d1})
    detector = build_detector(f"onnx:{path}?convention=gfl&classes={names}&strides=8,16&sigmoid=1")
    found = detector.detect_images([np.zeros((32, 64, 3), np.uint8)])[0]       # 64x32 -> 32x16 at the top
    expected = EXPECTED_GFL.copy()
    expected[:, [0, 2]] /= 32
    expected[:, [1, 3]] /= 16
    expected[:, :4] = np.clip(expected[:, :4], 0, 1)
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_batched_nms_keeps_classes_apart():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = batched_nms(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32), np.array([0, 0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 2, 3]


# -- boxes, scores, labels ---------------------------------------------------------------------------------
def bsl_model(path, input_shape=("n", 3, "h", "w"), boxes=((0, 0, 16, 16), (8, 8, 32, 32), (0, 16, 32, 32))) -> str:
    """Boxes and labels are constants; the scores are the input's three channel means (after the
    detector's normalisation), so the test sees the preprocessing. Outputs listed labels first."""
    boxes = np.array([boxes], np.float32)
    score_nodes = [helper.make_node("ReduceMean", ["image"], ["channel_means"], axes=[0, 2, 3], keepdims=0),
                   helper.make_node("Unsqueeze", ["channel_means", "axis0"], ["scores"])]
    path = save_model(path, list(input_shape), {"labels": np.array([[0, 1, 2]], np.int64), "boxes": boxes,
                                                "axis0": np.array([0], np.int64)},
                      computed=[("scores", score_nodes, [1, 3], TensorProto.FLOAT)])
    model = onnx.load(path)                                 # axis0 is an initializer, not an output
    keep = [o for o in model.graph.output if o.name != "axis0"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, path)
    return path


def test_boxes_scores_labels_by_name_with_preprocessing(tmp_path):
    path = bsl_model(tmp_path / "e2e.onnx")
    spec = f"onnx:{path}?convention=boxes_scores_labels&classes=coco&size=32&channels=bgr&mean=10,20,30&std=2,4,5"
    detector = build_detector(spec)
    image = np.empty((16, 16, 3), np.uint8)
    image[:] = (200, 100, 50)                                # R, G, B
    found = detector.detect_images([image])[0]
    # bgr: channel 0 is blue (50 - 10) / 2 = 20, then (100 - 20) / 4 = 20, then red (200 - 30) / 5 = 34
    expected = [[0, 0, 0.5, 0.5, 0, 20], [0.25, 0.25, 1, 1, 1, 20], [0, 0.5, 1, 1, 2, 34]]
    np.testing.assert_allclose(found, expected, atol=1e-4)
    assert detector.class_names[2] == "car"


def test_boxes_scores_labels_normalized_coordinates(tmp_path):
    boxes = ((0, 0, 0.5, 0.25), (0.25, 0.5, 1.5, 1), (0.5, 0.5, 0.5, 1))       # the last has no area
    path = bsl_model(tmp_path / "e2e.onnx", input_shape=(1, 3, 64, 64), boxes=boxes)
    detector = build_detector(f"onnx:{path}?convention=boxes_scores_labels&classes=coco&coords=normalized"
                              "&resize=stretch")
    found = detector.detect_images([np.zeros((8, 16, 3), np.uint8)])[0]        # stretched: normalised stays normalised
    np.testing.assert_allclose(found[:, :5], [[0, 0, 0.5, 0.25, 0], [0.25, 0.5, 1, 1, 1]], atol=1e-5)


# -- errors --------------------------------------------------------------------------------------------------
def test_outputs_that_do_not_match_the_convention(gfl_model, names, tmp_path):
    with pytest.raises(ValueError, match="do not match the boxes_scores_labels convention"):
        build_detector(f"onnx:{gfl_model}?convention=boxes_scores_labels&classes={names}")
    with pytest.raises(ValueError, match=r"do not match the gfl convention .* strides 8,16,32"):
        build_detector(f"onnx:{gfl_model}?convention=gfl&classes={names}")            # wrong strides
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="3 classes"):
        build_detector(f"onnx:{gfl_model}?convention=gfl&classes={three}&strides=8,16")
    bsl = bsl_model(tmp_path / "e2e.onnx")
    with pytest.raises(ValueError, match="give size="):
        build_detector(f"onnx:{bsl}?convention=boxes_scores_labels&classes=coco")
    with pytest.raises(ValueError, match="do not match the gfl convention"):
        build_detector(f"onnx:{bsl}?convention=gfl&classes=coco&size=32")


def test_bad_specs(gfl_model, names):
    with pytest.raises(ValueError, match="needs convention="):
        build_detector(f"onnx:{gfl_model}")
    with pytest.raises(ValueError, match="unknown onnx option 'bins'"):
        build_detector(f"onnx:{gfl_model}?convention=gfl&classes={names}&bins=3")
    with pytest.raises(ValueError, match="must be one of gfl, boxes_scores_labels"):
        build_detector(f"onnx:{gfl_model}?convention=yolo&classes={names}")
    with pytest.raises(FileNotFoundError, match="ONNX model .* does not exist"):
        build_detector(f"onnx:{gfl_model}.missing?convention=gfl&classes={names}")
    with pytest.raises(FileNotFoundError, match="class names file .* does not exist"):
        build_detector(f"onnx:{gfl_model}?convention=gfl&classes={names}.missing")


def test_cli_errors_write_nothing(gfl_model, names, data, capsys):
    for spec in (f"onnx:{gfl_model}.missing?convention=gfl&classes={names}",
                 f"onnx:{gfl_model}?convention=gfl&classes={names}.missing",
                 f"onnx:{gfl_model}?convention=boxes_scores_labels&classes={names}"):
        assert main(["detect", str(data), "--detector", spec, "--workers", "1"]) == 2
        assert "vivi detect: error:" in capsys.readouterr().err
    assert not (data / "detections").exists()
    assert main(["detect", str(data), "--detector", f"onnx:{gfl_model}?convention=gfl&classes={names}&strides=8,16",
                 "--workers", "1"]) == 0
    assert json.loads((data / "detections" / "gfl" / "detector.json").read_text())["settings"]["strides"] == [8, 16]


# -- nanodet (when `vivi detector fetch nanodet` has run) ----------------------------------------------------
def nanodet_or_skip():
    from vivi.detect.nanodet import FETCH_COMMAND, MODEL, cache_dir
    if not (cache_dir() / MODEL).is_file():
        pytest.skip(f"nanodet is not cached; run `{FETCH_COMMAND}` once")
    return build_detector("nanodet", threads=1)


def test_nanodet_without_the_cache_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("VIVI_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="vivi detector fetch nanodet"):
        build_detector("nanodet")


def test_nanodet_finds_grace_hopper():
    import cv2
    from matplotlib import cbook
    detector = nanodet_or_skip()
    image = cv2.cvtColor(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))), cv2.COLOR_BGR2RGB)
    found = detector.detect_images([image])[0]
    best = found[np.argmax(found[:, 5])]
    assert detector.class_names[int(best[4])] == "person" and best[5] > 0.5
    assert best[0] < 0.1 and best[1] < 0.1 and best[2] > 0.9 and best[3] > 0.9     # a portrait: she fills the frame


def test_nanodet_end_to_end_on_a_multi_shot_dataset(data):
    detector = nanodet_or_skip()
    summary = detect_dataset(data, detector, progress=False)
    assert summary.shards_written == 3 and summary.frames == sum(v.num_frames for v in VideoDataset(data).videos)
    stored = load_detections(data, "nanodet")
    assert len(stored.class_names) == 80 and stored.meta["settings"]["convention"] == "gfl"
    assert stored.covered.all() and len(stored.frame_box) == 1 + sum(v.num_frames for v in VideoDataset(data).videos)
