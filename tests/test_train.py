"""Training loop: exact resume, every tiny method learns, non-finite stop, export/load/embed, CLI."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vivi
from vivi.cli import main as cli_main
from vivi.detect import build_detector, detect_dataset
from vivi.train.checkpoint import latest_checkpoint, read_checkpoint
from vivi.train.config import load_config
from vivi.train.loop import NonFiniteLossError, learning_rate_schedule, train

FAST = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(world, dataset, tmp_path_factory) -> Path:
    """A private copy of the shared ``dataset`` fixture with ground-truth detections named ``groundtruth``
    (the tiny object preset's detector), so other test modules see the dataset unchanged."""
    out = tmp_path_factory.mktemp("train") / "ds"
    shutil.copytree(dataset, out)
    detect_dataset(out, build_detector("groundtruth"), progress=False)
    return out


@pytest.fixture(scope="module")
def image_source(tmp_path_factory) -> Path:
    """A labelled .npz: 4 classes of flat colours with noise."""
    rng = np.random.default_rng(0)
    colours = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)
    labels = rng.integers(0, 4, 64)
    images = np.clip(colours[labels][:, None, None, :] + rng.integers(-20, 20, (64, 40, 40, 3)), 0, 255)
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, images=images.astype(np.uint8), labels=labels)
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- resume
def test_resume_is_exact(data, tmp_path):
    over = FAST + ["optim.steps=6", "run.ckpt_every=3", "run.keep_checkpoints=5"]
    train("tiny-vivi-ex4", data, tmp_path / "straight", overrides=over, progress=False)
    train("tiny-vivi-ex4", data, tmp_path / "split", overrides=over[:-3] + ["optim.steps=3"], progress=False)
    # the resumed run takes its saved config; only the step count is extended
    # a crash after step 3's checkpoint: a later record is in the log but not in any checkpoint
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss": -1.0}) + "\n")
    train("tiny-vivi-ex4", data, tmp_path / "split", resume=True, overrides=["optim.steps=6"], progress=False)
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys() and a["optim"].keys() == b["optim"].keys()
    # one process, one thread: the same float operations in the same order, so equal bit for bit
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["optim"]:
        assert torch.equal(a["optim"][key], b["optim"][key]), key
    straight, split = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(1, 7))
    for x, y in zip(straight, split):
        assert x["loss"] == y["loss"] and x["lr"] == y["lr"]


def test_resume_without_checkpoint_starts_the_run_and_needs_a_config(data, tmp_path, capsys):
    """--resume on a folder without a checkpoint yet starts the run with a note (one requeue command
    for a job's first start and later ones); without --config there is nothing to start."""
    with pytest.raises(FileNotFoundError, match="no checkpoint .* no --config"):
        train(None, data, tmp_path / "empty", resume=True, progress=False)
    import signal
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = train("tiny-vivi-ex4", data, tmp_path / "empty", resume=True, overrides=FAST + ["optim.steps=1"],
                   progress=False)
    assert result["step"] == 1 and "starting the run from step 0" in capsys.readouterr().err
    # the loop's stop-at-step-end handlers are gone again
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_run_folder_is_continued_only_with_resume_and_its_own_config(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run)]
    assert cli_main(args + ["--config", "tiny-ex-yt-s"] + FAST + ["optim.steps=2"]) == 0
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    refused = {  # argv -> words of the message
        ("--config", "tiny-vivi-ex4", "optim.steps=3"): ["already holds a run", "--resume"],
        ("--config", "tiny-vivi-ex4", "--resume", "optim.steps=3"): ["'tiny-ex-yt-s' run", "--config tiny-ex-yt-s"],
        ("--resume", "model.encoder=resnet_small_v2"): ["model.encoder cannot change", "optim.steps"],
        ("--resume", "optim.steps=1"): ["at step 2 already"],
    }
    for extra, words in refused.items():
        capsys.readouterr()
        assert cli_main(args + list(extra)) == 2, extra
        err = capsys.readouterr().err
        assert all(word in err for word in words) and "Traceback" not in err, (extra, err)
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert after == before                                   # nothing written by a refused command
    # a half-written last record (the process was killed mid-write) does not block --resume
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"loss": 2.1, "lr"')
    assert cli_main(args + ["--resume", "optim.steps=3", "data.workers=0"]) == 0   # --config may be left out
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_finishes_the_step_writes_a_checkpoint_and_resume_is_exact(data, tmp_path, signum, status):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) in a one-process run: the step under way
    ends, its checkpoint is written (even far from ckpt_every), the exit status is 130 or 143, and
    --resume continues to the same parameters as a straight run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    over = FAST + ["run.ckpt_every=1000", "optim.steps=400"]
    run = tmp_path / "stopped"
    command = [sys.executable, "-m", "vivi.cli", "train", "--config", "tiny-ex-yt-s", "--data", str(data),
               "--out", str(run), *over]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}      # as this process (one_thread): the same float sums
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    stopped = read_checkpoint(run)["step"]
    assert 3 <= stopped < 400 and "--resume" in err and "Traceback" not in err, err
    assert [m["step"] for m in metrics(run)][-1] == stopped
    train("tiny-ex-yt-s", data, run, resume=True, overrides=[f"optim.steps={stopped + 2}"], progress=False)
    straight = tmp_path / "straight"
    train("tiny-ex-yt-s", data, straight, overrides=over[:-1] + [f"optim.steps={stopped + 2}"], progress=False)
    a, b = read_checkpoint(straight), read_checkpoint(run)
    for key in a["model"]:                # one thread in both processes: equal bit for bit
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.parametrize("override, words", [
    ("optim.base_batch=0", "optim.base_batch must be at least 1"), ("data.size=0", "data.size must be at least 8"),
    ("model.width=0", "model.width must be at least 1"), ("optim.lr=-1", "optim.lr must be at least 0"),
    ("optim.decay_factor=-1", "optim.decay_factor"), ("data.frames=1", "needs data.frames >= 2"),
    ("optim.lr=[", "is not a value")])
def test_settings_out_of_range_are_refused_before_the_run_folder(data, tmp_path, override, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        train("tiny-vivi-ex4", data, tmp_path / "run", overrides=FAST + [override], progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=nan", "loss.margin=.inf", "optim.momentum=.nan",
                                      "run.timeout_s=0"])
def test_values_that_are_not_finite_or_out_of_range_are_refused(override):
    """NaN passes every `value < low` range check, so a nan learning rate or margin used to train."""
    with pytest.raises(ValueError, match="not a finite number|run.timeout_s must be at least 1"):
        load_config("tiny-vivi-ex4", [override])


def test_config_file_mistakes_name_the_file(tmp_path):
    """Not YAML, not a mapping, or empty (which used to run the defaults: a ResNet-50 at batch 512)."""
    cases = {"syntax.yaml": "data:\n  shots: 4\n  frames 4\n", "list.yaml": "- data\n- model\n",
             "empty.yaml": "", "comments.yaml": "# nothing here\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=name):
            load_config(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- every method learns
TINY = ["tiny-ex-yt-f", "tiny-ex-yt-s", "tiny-vivi-ex2", "tiny-vivi-ex4", "tiny-vivi-ex2-ord", "tiny-rot-yt-f",
        "tiny-vivi-rot4", "tiny-vivi-ex4-obj", "tiny-vivi-ex4-co"]


@pytest.mark.parametrize("preset", TINY)
def test_tiny_preset_loss_decreases(preset, data, image_source, tmp_path):
    over = ["data.workers=0", "run.log_every=1", "optim.steps=16", "optim.warmup_steps=2",
            "data.videos=4", "optim.decay_steps=[]", "augment.preset=eval"]
    if preset.endswith("-co"):
        over.append(f"loss.cotrain_source={image_source}")
    if preset == "tiny-ex-yt-f":    # its exemplars are copies of one frame: without augmentation they are identical
        over[-1] = "augment.preset=inception"
    run = tmp_path / preset
    train(preset, data, run, overrides=over, progress=False)
    losses = [m["loss"] for m in metrics(run)]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    # Without random augmentation the losses follow from the seed alone; every method's mean over
    # the last 4 steps is 12-100 % below the first 4's, so a run whose parameters do not move (no
    # optimizer step, a zero learning rate: the batches alone vary the loss) fails a 5 % margin.
    assert np.mean(losses[-4:]) < 0.95 * np.mean(losses[:4]), losses
    record = metrics(run)[-1]
    assert {"lr", "grad_norm", "frames_per_s"} <= record.keys()
    config = load_config(preset, over)
    expected = {"exemplar" if config.loss.frame == "exemplar" else "rotation"}
    if config.loss.video != "none":
        expected.add(config.loss.video)
    if config.loss.object_weight:
        expected.add("object")
    if config.loss.cotrain_weight:
        expected.add("supervised")
    assert {k.split("/", 1)[1] for k in record if k.startswith("loss/")} == expected


def test_run_folder_contents(data, tmp_path):
    run = tmp_path / "run"
    train("tiny-ex-yt-s", data, run, overrides=FAST + ["optim.steps=2"], progress=False)
    assert load_config(run / "config.yaml").optim.steps == 2
    assert latest_checkpoint(run).name == "step-0000002.safetensors"
    assert read_checkpoint(run)["config"]["optim"]["steps"] == 2           # resolved config in the checkpoint
    assert list((run / "tensorboard").glob("events.*"))
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_run_log_writes_nothing_on_other_ranks(tmp_path):
    """Ranks other than 0 leave the (shared) run folder alone: no folder, config.yaml or
    metrics.jsonl lines of theirs beside rank 0's; their records still get step and frames/s, so
    every rank's ``train`` returns the same keys."""
    from vivi.train.log import RunLog
    log = RunLog(tmp_path / "run", load_config("tiny-ex-yt-s"), start_step=0, resumed=False, main_process=False,
                 progress=False)
    record = {"loss": 1.0, "loss/exemplar": 1.0}
    log.write(10, record)
    log.advance()
    log.close()
    assert not (tmp_path / "run").exists()
    assert record["step"] == 10 and record["frames_per_s"] > 0


def test_schedule_warmup_and_decay():
    config = load_config("vivi-ex4", validate=False)
    lr = learning_rate_schedule(config)
    assert len(lr) == 120000
    assert lr[0] == pytest.approx(0.8 / 5000) and lr[4999] == pytest.approx(0.8)
    assert lr[89999] == pytest.approx(0.8) and lr[90000] == pytest.approx(0.08) and lr[110000] == pytest.approx(0.008)
    half = load_config("vivi-ex4", ["data.videos=256"], validate=False)
    assert learning_rate_schedule(half)[10000] == pytest.approx(0.4)      # linear scaling with N·K


# ---------------------------------------------------------------- failures
def test_non_finite_loss_names_step_and_term(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"step 2: term 'exemplar'"):
        train("tiny-ex-yt-s", data, tmp_path / "nan", progress=False,
              overrides=FAST + ["optim.steps=5", "optim.lr=1e30", "optim.warmup_steps=1"])


def test_more_videos_per_batch_than_the_dataset_has_is_noted(data, tmp_path, capsys):
    eligible = len(json.loads((data / "manifest.json").read_text())["per_video"])
    train("tiny-ex-yt-s", data, tmp_path / "run", overrides=FAST + [f"data.videos={eligible + 2}", "optim.steps=1"],
          progress=False)
    assert f"data.videos={eligible + 2} but only {eligible} videos" in capsys.readouterr().err


def test_dataset_without_enough_shots_errors_before_compute(data, tmp_path):
    with pytest.raises(ValueError, match="no video .* has 8 shots"):
        train("tiny-vivi-ex4", data, tmp_path / "k8", overrides=FAST + ["data.shots=8"], progress=False)
    assert not (tmp_path / "k8").exists()
    lost = tmp_path / "lost"                         # the shards are gone: said so, not "no video has K shots"
    shutil.copytree(data, lost, ignore=shutil.ignore_patterns("*.tar"))
    with pytest.raises(ValueError, match=r"no complete shard .* `vivi ingest`"):
        train("tiny-vivi-ex4", lost, tmp_path / "run", overrides=FAST, progress=False)


def test_missing_cotrain_source_errors(data, tmp_path):
    with pytest.raises(ValueError, match="cotrain_source"):
        train("tiny-vivi-ex4-co", data, tmp_path / "co", overrides=FAST, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train("tiny-vivi-ex4-co", data, tmp_path / "co", progress=False,
              overrides=FAST + [f"loss.cotrain_source={tmp_path / 'nope.npz'}"])


def test_empty_detections_error_before_compute(data, tmp_path):
    folder = data / "detections" / "empty"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "detector.json").write_text(json.dumps({"detector": "empty", "class_names": []}))
    from vivi.data import VideoDataset
    by_shard: dict = {}                              # every frame seen, no box found; a file per shard
    for v in VideoDataset(data).videos:
        by_shard.setdefault(Path(v.shard).stem, {})[v.key] = [[] for _ in range(v.num_frames)]
    for shard, videos in by_shard.items():
        (folder / f"{shard}.json").write_text(json.dumps({"videos": videos}))
    with pytest.raises(ValueError, match="hold no box"):
        train("tiny-vivi-ex4-obj", data, tmp_path / "e", overrides=FAST + ["data.detector=empty"], progress=False)
    with pytest.raises(FileNotFoundError, match="no detections named 'nope'"):
        train("tiny-vivi-ex4-obj", data, tmp_path / "e", overrides=FAST + ["data.detector=nope"], progress=False)


@pytest.mark.parametrize("setting", ["loss.object_terms=triplet+classification",
                                     "loss.object_mode=random_boxes_and_labels"])
def test_a_box_classifier_of_another_size_than_the_detectors_classes_is_refused(data, tmp_path, setting):
    """A COCO detector's 80 classes went into a 10-way box classifier (labels past 9 out of range) and
    the label ablation drew from 10 classes instead of 80; the triplet alone takes any labels."""
    over = FAST + ["model.object_classes=7", "optim.steps=1"]
    with pytest.raises(ValueError, match="have 10 classes but model.object_classes=7: pass model.object_classes=10"):
        train("tiny-vivi-ex4-obj", data, tmp_path / "refused", overrides=[*over, setting], progress=False)
    assert train("tiny-vivi-ex4-obj", data, tmp_path / "triplet", overrides=over, progress=False)["step"] == 1


# ---------------------------------------------------------------- export / load / embed
def test_export_load_embed_round_trip(data, tmp_path):
    run = tmp_path / "run"
    train("tiny-vivi-ex4", data, run, overrides=FAST + ["optim.steps=2"], progress=False)
    ckpt = read_checkpoint(run)
    encoder = vivi.load_encoder(run)
    assert not encoder.training
    x = torch.rand(3, 3, 40, 48)
    ref = encoder(x)
    assert ref.shape == (3, encoder.num_features)
    for out in (tmp_path / "enc.safetensors", tmp_path / "enc.pt"):
        assert cli_main(["export", str(run), "--out", str(out)]) == 0
        loaded = vivi.load_encoder(out)
        torch.testing.assert_close(loaded(x), ref)
    torch.testing.assert_close(vivi.load_encoder(ckpt["path"])(x), ref)
    tensors = load_file(tmp_path / "enc.safetensors")
    assert all(not k.startswith(("encoder.", "frame_head")) for k in tensors)
    # images on disk -> .npy
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(50, 70, 3), (64, 64, 3), (33, 90, 3)]):
        cv2.imwrite(str(folder / ("sub" if i else "") / f"im{i}.png"), rng.integers(0, 255, shape, np.uint8))
    out = tmp_path / "emb.npy"
    assert cli_main(["embed", "--checkpoint", str(tmp_path / "enc.safetensors"), str(folder), "--out", str(out)]) == 0
    array = np.load(out)
    assert array.shape == (3, encoder.num_features) and np.isfinite(array).all()
    np.testing.assert_allclose(vivi.embed(encoder, [folder]), array, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vivi.embed(encoder, folder), array, rtol=1e-5, atol=1e-5)   # one path
    # the encoder refuses inputs that would give wrong features silently
    with pytest.raises(TypeError, match="float"):
        encoder((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="divide"):
        encoder(x * 255)
    # unreadable files are skipped and reported by `vivi embed`, the rows listed in order; the
    # output's folder is made
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    cv2.imwrite(str(folder / "grey.tif"), rng.integers(0, 255, (40, 40), np.uint8))
    with pytest.raises(ValueError, match="broken.jpg"):
        vivi.embed(encoder, folder)
    out = tmp_path / "new" / "emb"
    assert cli_main(["embed", "--checkpoint", str(tmp_path / "enc.pt"), str(folder), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "new" / "emb.files.jsonl").read_text().splitlines()]
    assert rows == [str(folder / "grey.tif"), str(folder / "im0.png"), str(folder / "sub" / "im1.png"),
                    str(folder / "sub" / "im2.png")]
    embedded = np.load(tmp_path / "new" / "emb.npy")
    assert embedded.shape == (4, encoder.num_features)
    np.testing.assert_allclose(embedded[[rows.index(str(p)) for p in sorted(folder.rglob("im*.png"))]], array,
                               rtol=1e-5, atol=1e-5)


def test_load_encoder_wrong_kind(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"kind": "something"})
    with pytest.raises(ValueError, match="not a vivi encoder or checkpoint"):
        vivi.load_encoder(tmp_path / "other.safetensors")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vivi encoder export"):
        vivi.load_encoder(tmp_path / "other.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        vivi.load_encoder(tmp_path / "junk.safetensors")


def test_cli_train_and_resume(data, tmp_path, capsys):
    run = tmp_path / "cli"
    args = ["train", "--config", "tiny-ex-yt-f", "--data", str(data), "--out", str(run)] + FAST
    assert cli_main(args + ["optim.steps=2"]) == 0
    assert cli_main(["train", "--config", "tiny-ex-yt-f", "--data", str(data), "--out", str(run),
                     "--resume", "optim.steps=3"]) == 0
    assert read_checkpoint(run)["step"] == 3
    assert cli_main(args + ["optim.stepz=3"]) == 2
    assert "optim.steps" in capsys.readouterr().err


# ---------------------------------------------------------------- torchrun (2 x gloo) == one process
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_step_matches_single_process(data, tmp_path):
    """One step of DDP on 2 ranks == one process on the same global batch.

    Chosen so that the two are mathematically equal: GroupNorm + WS (no batch statistics),
    rotation (a per-frame mean) + InfoNCE (negatives gathered from all ranks), no random
    augmentation (its seeds depend on the rank). Rank r reads stream positions r, r + 2, ...;
    the one process reads them all: the same 4 videos.
    """
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    # fp32: bf16 autocast rounds each convolution of a 2-video rank and of the 4-video process in
    # its own way (8 significant bits), far beyond the 1e-4 that the equality is checked to
    over = ["data.videos=4", "data.workers=0", "optim.steps=1", "optim.warmup_steps=1", "model.norm=gnws",
            "augment.preset=eval", "optim.lr=0.5", "run.precision=fp32"]
    args = ["--config", "tiny-vivi-rot4", "--data", str(data)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vivi.cli",
           "train", *args, "--out", str(tmp_path / "ddp"), *over]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    train("tiny-vivi-rot4", data, tmp_path / "one", overrides=over, progress=False)
    a, b = read_checkpoint(tmp_path / "ddp"), read_checkpoint(tmp_path / "one")
    assert metrics(tmp_path / "ddp")[0]["loss/infonce"] != pytest.approx(0.0)
    # the logged terms are averaged over ranks: the global batch's values
    assert metrics(tmp_path / "ddp")[0]["loss"] == pytest.approx(metrics(tmp_path / "one")[0]["loss"], rel=1e-4)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_autocast_keeps_heads_and_losses_in_float32():
    """The CUDA path (bf16 autocast) checked on the CPU: the encoder runs in bf16, heads and losses in fp32."""
    from vivi.train.model import VIVIModel, weighted_terms
    config = load_config("tiny-vivi-ex4-obj", ["loss.object_terms=triplet+classification"])
    model = VIVIModel(config)
    frames = torch.rand(2, 4, 2, 3, 32, 32)
    boxes = torch.tensor([0.2, 0.2, 0.7, 0.6]).expand(2, 4, 2, 3, 4).clone()
    labels = torch.randint(0, 5, (2, 4, 2, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, _ = model(frames, boxes, labels, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"exemplar", "infonce", "object"}
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    sum(weighted_terms(config, terms).values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_labeled_image_sources(tmp_path):
    """Folder (one sub-folder per class), .npz and .npy + .labels.npy; class-balanced fraction;
    batches drawn from a seed (so a resumed run draws the same images)."""
    from vivi.data.images import LabeledImages
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(tmp_path / "folder" / name / f"{i}.png"), np.full((20 + c, 30, 3), 100 * c, np.uint8))
    images = rng.integers(0, 255, (20, 24, 24, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], 10)
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    np.save(tmp_path / "b.npy", images)
    np.save(tmp_path / "b.labels.npy", labels)
    for source in ("folder", "a.npz", "b.npy"):
        src = LabeledImages(tmp_path / source, size=16, fraction=0.3)
        assert src.num_classes == 2 and len(src) == 6              # 3 of each class
        x, y = src.batch(5, [0, 7, 0])
        assert x.shape == (5, 3, 16, 16) and x.dtype == torch.uint8 and y.shape == (5,)
        x2, y2 = src.batch(5, [0, 7, 0])
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(FileNotFoundError, match="labels"):
        np.save(tmp_path / "c.npy", images)
        LabeledImages(tmp_path / "c.npy")
