"""Training under torchrun beyond one clean node: several agents (nodes) on 127.0.0.1, elastic
restart after a killed rank, a rank lost without restarts, SIGTERM to one rank, a stopped rank
(collective timeout), BatchNorm over ranks, and a resume with another number of processes.

Every run is gloo on CPU with one thread per process; the failures are made by the test hook
``VIVI_TEST_SIGNAL=RANK:STEP:SIGNAL:MARKER`` of vivi/train/loop.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vivi
from vivi.api import export
from vivi.train.checkpoint import read_checkpoint
from vivi.train.loop import train

REPO = Path(__file__).resolve().parents[1]
OVER = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2", "optim.steps=6",
        "run.ckpt_every=2", "run.keep_checkpoints=5"]

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "VIVI_TEST_SIGNAL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return {**env, **extra}


def _torchrun(launch: list[str], data: Path, out: Path, *extra: str, env: dict | None = None,
              log: Path | None = None) -> subprocess.Popen:
    """One torchrun agent training tiny-vivi-ex4 into ``out``; its output goes to ``log``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "vivi.cli", "train",
           "--config", "tiny-vivi-ex4", "--data", str(data), "--out", str(out), *OVER, *extra]
    sink = open(log or out.with_suffix(".log"), "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env or _env(), stdout=sink, stderr=subprocess.STDOUT, text=True)


def _standalone(data: Path, out: Path, *extra: str, restarts: int = 0, env: dict | None = None):
    launch = ["--standalone", "--nproc-per-node", "2", "--max-restarts", str(restarts),
              "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    return _torchrun(launch, data, out, *extra, env=env)


def _finish(process: subprocess.Popen, out: Path, timeout: float = 150) -> str:
    process.wait(timeout=timeout)
    return out.with_suffix(".log").read_text()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Same parameters, buffers and momentum bit for bit, and the same logged losses at every step:
    the same float operations in the same order on the same ranks (one thread each)."""
    x, y = read_checkpoint(a), read_checkpoint(b)
    assert x["step"] == y["step"] and x["model"].keys() == y["model"].keys()
    for part in ("model", "optim"):
        for key in x[part]:
            assert torch.equal(x[part][key], y[part][key]), (part, key)
    assert [(m["step"], m["loss"]) for m in metrics(a)] == [(m["step"], m["loss"]) for m in metrics(b)]


@pytest.fixture(scope="module")
def data(dataset) -> Path:
    return dataset


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """6 steps of one agent with 2 processes, uninterrupted: what every other run must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    process = _standalone(data, out)
    log = _finish(process, out)
    assert process.returncode == 0, log[-3000:]
    assert [m["step"] for m in metrics(out)] == list(range(1, 7))
    return out


def test_two_agents_equal_one_agent_with_two_processes(data, straight, tmp_path):
    """`torchrun --nnodes 2 --nproc-per-node 1` (c10d rendezvous, two agents) trains the same run as
    one agent with 2 processes: global ranks shard the data, rank 0 writes, local rank 0 on each
    node; a wrong rank or world size would change the batches and so the losses and weights."""
    out, port = tmp_path / "run", _free_port()
    agents = []
    for node in range(2):
        launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                  f"127.0.0.1:{port}", "--rdzv-id", "vivi-test", "--rdzv-conf", f"is_host={node == 0}"]
        agents.append(_torchrun(launch, data, out, log=tmp_path / f"node{node}.log"))
    for node, agent in enumerate(agents):
        agent.wait(timeout=150)
        assert agent.returncode == 0, (tmp_path / f"node{node}.log").read_text()[-3000:]
    assert_same_run(straight, out)


def test_killed_rank_restarts_the_group_which_resumes_exactly(data, straight, tmp_path):
    """--max-restarts 1 and rank 1 SIGKILLed after step 3: the restarted workers resume from the
    step-2 checkpoint by themselves and end with the uninterrupted run's weights and losses."""
    out = tmp_path / "run"
    process = _standalone(data, out, restarts=1, env=_env(VIVI_TEST_SIGNAL=f"1:3:KILL:{tmp_path / 'killed'}"))
    log = _finish(process, out)
    assert process.returncode == 0 and (tmp_path / "killed").exists(), log[-3000:]
    assert "torchrun restarted the workers (restart 1): resuming" in log, log[-3000:]
    assert_same_run(straight, out)


def test_a_rank_lost_without_restarts_ends_every_agent_naming_it(data, tmp_path):
    """Two agents, rank 1 SIGKILLed after step 2, no restarts: both agents end within 60 s with a
    failure, and the output names rank 1 (no survivor waits for the dead rank)."""
    out, port = tmp_path / "run", _free_port()
    env = _env(VIVI_TEST_SIGNAL=f"1:2:KILL:{tmp_path / 'killed'}")
    start = time.monotonic()
    agents = []
    for node in range(2):
        launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                  f"127.0.0.1:{port}", "--rdzv-id", "vivi-lost", "--rdzv-conf", f"is_host={node == 0}"]
        agents.append(_torchrun(launch, data, out, env=env, log=tmp_path / f"node{node}.log"))
    try:
        for agent in agents:
            agent.wait(timeout=max(1.0, 90 - (time.monotonic() - start)))
    finally:
        for agent in agents:
            agent.kill()
    took = time.monotonic() - start
    log = "".join((tmp_path / f"node{node}.log").read_text() for node in range(2))
    assert took < 60 and all(agent.returncode != 0 for agent in agents), (took, log[-4000:])
    assert "rank      : 1 " in log and "lost another rank" in log, log[-4000:]


def test_sigterm_to_one_rank_stops_both_at_one_step_and_resume_is_exact(data, straight, tmp_path):
    """SIGTERM reaches rank 1 only, after step 3: both ranks stop after step 3 (agreed by an
    all-reduce), rank 0 writes that step's checkpoint, and --resume continues to the straight run."""
    out = tmp_path / "run"
    process = _standalone(data, out, env=_env(VIVI_TEST_SIGNAL=f"1:3:TERM:{tmp_path / 'term'}"))
    log = _finish(process, out)
    assert process.returncode != 0 and "terminated after step 3" in log, log[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002.safetensors",
                                                                      "step-0000003.safetensors"]
    assert [m["step"] for m in metrics(out)][-1] == 3
    process = _standalone(data, out, "--resume")
    log = _finish(process, out)
    assert process.returncode == 0, log[-3000:]
    assert_same_run(straight, out)


def test_a_stopped_rank_ends_the_run_after_run_timeout_s(data, tmp_path):
    """Rank 1 SIGSTOPped after step 2 with run.timeout_s=6: rank 0 gives up after 6 s with one line
    saying it waited for a rank that stopped responding and naming the setting (gloo's default
    would wait 30 minutes)."""
    out = tmp_path / "run"
    marker = tmp_path / "stopped"
    process = _standalone(data, out, "run.timeout_s=6", env=_env(VIVI_TEST_SIGNAL=f"1:2:STOP:{marker}"))
    log_file = out.with_suffix(".log")
    try:
        deadline, stopped_at = time.monotonic() + 120, None
        while "waited 6 s" not in log_file.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_file.read_text()[-3000:]
            if stopped_at is None and marker.exists():
                stopped_at = time.monotonic()
            time.sleep(0.2)
        # the timeout plus a step and the polling: far below gloo's default of 1800 s
        assert stopped_at is not None and time.monotonic() - stopped_at < 30
        log = log_file.read_text()
        assert "rank 0 waited 6 s at step 3" in log and "run.timeout_s" in log, log[-3000:]
    finally:
        if marker.exists():
            pid = int(marker.read_text())
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        process.wait(timeout=60)
    assert process.returncode != 0


def _bn_buffers(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_checkpoint(run)["model"].items() if k.endswith(("running_mean", "running_var"))}


def test_sync_bn_statistics_equal_one_process_on_the_global_batch(data, tmp_path):
    """model.sync_bn=true, 2 ranks, one step: every BatchNorm running mean and variance equals one
    process's on the same global batch; without sync_bn each rank's half-batch statistics differ.
    The checkpoint loads in one process and exports as a plain encoder."""
    # fp32: under bf16 autocast one process's convolutions would round otherwise than each rank's
    over = ["data.videos=4", "data.workers=0", "optim.steps=1", "optim.warmup_steps=1", "augment.preset=eval",
            "optim.lr=0.5", "run.precision=fp32"]
    runs = {}
    for sync in (True, False):
        out = tmp_path / f"sync{sync}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "vivi.cli", "train", "--config",
               "tiny-vivi-rot4", "--data", str(data), "--out", str(out), *over, f"model.sync_bn={sync}"]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[sync] = _bn_buffers(out)
    train("tiny-vivi-rot4", data, tmp_path / "one", overrides=over, progress=False)
    one = _bn_buffers(tmp_path / "one")
    assert len(one) > 4
    for key, value in one.items():
        # the global sums are added in another order than one process's: float32 rounding only
        torch.testing.assert_close(runs[True][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(runs[False][key], value, rtol=1e-3, atol=1e-4) for key, value in one.items())
    encoder = vivi.load_encoder(tmp_path / "syncTrue")
    assert all(type(m) is not torch.nn.SyncBatchNorm and "CrossRank" not in type(m).__name__
               for m in encoder.modules())
    export(tmp_path / "syncTrue", tmp_path / "encoder.safetensors")
    assert vivi.load_encoder(tmp_path / "encoder.safetensors")(torch.rand(2, 3, 32, 32)).shape[0] == 2
    # under bf16 autocast the layer keeps its statistics in float32 (a bf16 mean failed the running
    # average's lerp_, ending the run): the same statistics up to bf16's rounding of the activations
    cmd[cmd.index(str(tmp_path / "syncFalse"))] = str(tmp_path / "bf16")
    cmd = [arg for arg in cmd if arg not in ("run.precision=fp32", "model.sync_bn=False")]
    proc = subprocess.run([*cmd, "run.precision=bf16", "model.sync_bn=true"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for key, value in _bn_buffers(tmp_path / "bf16").items():
        torch.testing.assert_close(value, one[key], rtol=0.05, atol=0.02, msg=key)


def test_resume_with_another_number_of_processes_is_refused(data, straight, tmp_path):
    """A run of 2 processes resumed by one: each rank read its share of every batch with its own
    augmentation, so one process would train on other batches; refused with one line."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    with pytest.raises(ValueError, match="trained by 2 process\\(es\\), this run has 1"):
        train(None, data, run, resume=True, overrides=["optim.steps=7"], progress=False)
    assert read_checkpoint(run)["step"] == 6


def test_vivi_torchrun_runs_the_command_as_torchrun_does(data, straight, tmp_path):
    """`vivi torchrun OPTIONS train ...` is `torchrun OPTIONS -m vivi.cli train ...`: the same run,
    bit for bit (catches options or arguments lost on the way)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vivi.cli", "torchrun", "--standalone", "--nproc-per-node", "2",
           "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "train", "--config", "tiny-vivi-ex4", "--data", str(data),
           "--out", str(out), *OVER]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(straight, out)


@pytest.mark.parametrize("endpoint", ["192.0.2.1:29500", "no-such-host.invalid:29500"])
def test_an_endpoint_that_does_not_answer_is_one_line_in_seconds(tmp_path, endpoint):
    """A rendezvous endpoint on another machine that does not answer (wrong host or port, a
    firewall, a head node not started): one line naming it within the wait (3 s here, 30 s by
    default), exit status 2, instead of torchrun's minutes of retries and stack traces."""
    cmd = [sys.executable, "-m", "vivi.cli", "torchrun", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "job", "train",
           "--config", "tiny-vivi-ex4", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=_env(VIVI_RDZV_WAIT_S="3"), capture_output=True, text=True,
                          timeout=60)
    assert time.monotonic() - start < 20
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"vivi torchrun: error: the rendezvous endpoint {endpoint} did not answer within 3 s")
    assert not (tmp_path / "run").exists()
