"""One writer per folder (vivi.files.writer_lock): a second command into a folder that a live one
writes is refused with the holder named; a lock left by a dead process (this host) or not refreshed
(another host of a shared file system) is taken over with one line naming it; the same process
re-enters its own lock; the lock goes when its block ends, by an error too."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from vivi import files
from vivi.files import LOCK_NAME, FolderLocked, writer_lock

HOLD = """import sys, time
from vivi.files import writer_lock
with writer_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds the lock of a folder (``holder(folder, command)``); killed after the test."""
    started = []

    def start(folder, command="train"):
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command], stdout=subprocess.PIPE,
                                   text=True)
        started.append(process)
        assert process.stdout.readline() == "held\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def lease(folder, key=None) -> dict:
    return json.loads((folder / (LOCK_NAME if key is None else f"{LOCK_NAME}.{key}")).read_text())


def write_lease(folder, **record) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"host": socket.gethostname(), "pid": 4242, "start": None, "boot": None, "command": "train",
            "key": None, "since": "2026-12-06T04:31:07Z", "token": "old"}
    (folder / LOCK_NAME).write_text(json.dumps({**base, **record}))


def test_a_second_synth_into_a_folder_being_written_is_refused_and_the_first_goes_on(tmp_path):
    """Two `vivi synth` into one folder: the second stops at once, exit 2, one line naming the first
    (pid, host, command), and writes nothing; the first keeps running and its lock and files stay
    (catches a missing lock: the second would run and write the same videos at the same time)."""
    out = tmp_path / "w"
    command = [sys.executable, "-m", "vivi.cli", "synth", str(out), "--videos", "400", "--seconds", "2",
               "--no-tasks", "--workers", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True,
                             preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 60
        while not list(out.glob("videos/*.mp4")):
            assert time.time() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.05)
        world = (out / "world.json").read_bytes()
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert second.stderr == (f"vivi synth: error: {out} is being written by `vivi synth` (pid {first.pid} on "
                                 f"host {socket.gethostname()}, since {lease(out)['since'][:16].replace('T', ' ')} "
                                 "UTC): wait for it to finish, or pass another folder\n")
        assert first.poll() is None and lease(out)["pid"] == first.pid
        assert (out / "world.json").read_bytes() == world
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 130 and not (out / LOCK_NAME).exists()


def test_a_lock_left_by_kill_9_is_taken_over_with_one_line(tmp_path, holder, capsys):
    """kill -9 leaves the lock; the next command finds its process gone and takes it over, naming it
    (catches a lock that refuses forever, and one taken over silently)."""
    process = holder(tmp_path / "out", "train")
    since = lease(tmp_path / "out")["since"][:16].replace("T", " ")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (tmp_path / "out" / LOCK_NAME).exists()
    with writer_lock(tmp_path / "out", "eval"):
        assert lease(tmp_path / "out")["pid"] == os.getpid() and lease(tmp_path / "out")["command"] == "eval"
    assert capsys.readouterr().err == (
        f"vivi eval: taking over the lock of {tmp_path / 'out'} left by `vivi train` (pid {process.pid} on host "
        f"{socket.gethostname()}, since {since} UTC): that process is gone\n")
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path, capsys):
    """A lock naming a live pid whose process started at another time (the pid was reused) is stale."""
    write_lease(tmp_path, pid=os.getppid(), start="1")
    with writer_lock(tmp_path, "eval"):
        pass
    assert f"pid {os.getppid()} is now another process" in capsys.readouterr().err
    write_lease(tmp_path, pid=os.getppid(), start=files._start_time(os.getppid()))     # the same process: live
    with pytest.raises(FolderLocked, match=f"being written by `vivi train` \\(pid {os.getppid()} on host"):
        with writer_lock(tmp_path, "eval"):
            pass


def test_a_lock_of_another_host_is_stale_only_when_no_longer_refreshed(tmp_path, capsys):
    """On a shared file system the holder's pid means nothing here: its heartbeat does. A fresh lock
    of another host refuses; one not refreshed for STALE_AFTER_S is taken over."""
    write_lease(tmp_path, host="node-7", pid=4242)
    with pytest.raises(FolderLocked, match=f"^{tmp_path} is being written by `vivi train` \\(pid 4242 on host "
                                           "node-7, since 2026-12-06 04:31 UTC\\): wait for it to finish"):
        with writer_lock(tmp_path, "eval"):
            pass
    old = time.time() - files.STALE_AFTER_S - 120
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with writer_lock(tmp_path, "eval"):
        assert lease(tmp_path)["host"] == socket.gethostname()
    assert "(pid 4242 on host node-7, since 2026-12-06 04:31 UTC): not refreshed for 7 min" in capsys.readouterr().err


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path, monkeypatch):
    """The holder refreshes its lock's modification time, so that other hosts see it alive."""
    monkeypatch.setattr(files, "HEARTBEAT_S", 0.05)
    with writer_lock(tmp_path, "train"):
        old = time.time() - 1000
        os.utime(tmp_path / LOCK_NAME, (old, old))
        time.sleep(0.5)
        assert time.time() - (tmp_path / LOCK_NAME).stat().st_mtime < 5


def test_two_takers_of_one_stale_lock_do_not_both_win(tmp_path):
    """Both judged the same lock stale; the first replaced it; the second's take-over moves the
    first's fresh lock aside, sees that it is not the stale one, puts it back and is refused
    (catches a take-over that removes whatever lock is there)."""
    write_lease(tmp_path, pid=4242, token="stale")
    with writer_lock(tmp_path, "eval"):
        mine = lease(tmp_path)["token"]
        late = files._Lease(tmp_path / LOCK_NAME, tmp_path, "eval", None)
        assert late._set_aside("stale") is False
        assert lease(tmp_path)["token"] == mine and [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
        with pytest.raises(FolderLocked):
            late.acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_same_process_reenters_its_lock_and_a_forked_child_does_not(tmp_path):
    """The demo runs other commands inside its own: the same process re-enters a lock it holds (one
    lease, ended by the outermost block); a forked child does not inherit the parent's lease."""
    import multiprocessing
    with writer_lock(tmp_path, "demo"):
        with writer_lock(tmp_path, "synth"):
            with writer_lock(tmp_path / "world", "synth"):      # a folder inside: its own lock
                assert lease(tmp_path / "world")["command"] == "synth"
        assert lease(tmp_path)["command"] == "demo"
        child = multiprocessing.get_context("fork").Process(target=_enter, args=(tmp_path,))
        child.start()
        child.join(30)
        assert child.exitcode == 3
        assert lease(tmp_path)["command"] == "demo"
    assert not (tmp_path / LOCK_NAME).exists() and not (tmp_path / "world" / LOCK_NAME).exists()


def _enter(folder) -> None:
    try:
        with writer_lock(folder, "synth"):
            os._exit(0)
    except FolderLocked:
        os._exit(3)


def test_the_lock_goes_after_an_error_and_keys_lock_parts_apart(tmp_path, capsys):
    """An error inside the block removes the lock (no take-over message next time); keyed locks of
    one folder (ingest parts, output files) are separate; a URL gets no lock file."""
    with pytest.raises(RuntimeError):
        with writer_lock(tmp_path, "eval"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with writer_lock(tmp_path, "eval"), writer_lock(tmp_path, "ingest", key="part-0-of-2"), \
            writer_lock(tmp_path, "ingest", key="part-1-of-2"):
        assert lease(tmp_path, "part-1-of-2")["key"] == "part-1-of-2"
    assert capsys.readouterr().err == "" and list(tmp_path.iterdir()) == []
    with writer_lock("s3://bucket/out", "eval"):
        pass
    assert not os.path.exists("s3:")


def test_a_second_eval_into_one_out_is_refused(tmp_path, holder, capsys):
    """`vivi eval` takes its --out's lock: while another evaluation holds it, exit 2 naming it."""
    from test_eval import write_colour_task

    from vivi.cli import main
    suite = write_colour_task(tmp_path)
    process = holder(tmp_path / "out", "eval")
    args = ["eval", "--checkpoint", "random:resnet_tiny_v2", "--suite", str(suite), "--out", str(tmp_path / "out"),
            "--protocol", "knn", "--resolution", "32", "--knn-k", "5", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vivi eval: error: {tmp_path / 'out'} is being written by `vivi eval` (pid {process.pid} ")
    assert not (tmp_path / "out" / "results.json").exists()
    process.kill()
    process.wait()
    assert main(args) == 0 and (tmp_path / "out" / "results.json").exists()


def test_the_next_holder_removes_temporary_files_of_killed_writers(tmp_path, holder):
    """A file half-written under its temporary name when its writer was killed (``.NAME.tmp-PID``)
    is removed by the next command that takes the folder's lock, in sub-folders too; a temporary
    file of a process still running stays (catches leftovers piling up run after run)."""
    killed = holder(tmp_path / "run")
    dead = tmp_path / "run" / "checkpoints" / f".step-000010.pt.tmp-{killed.pid}"
    dead.parent.mkdir()
    dead.write_bytes(b"half a checkpoint")
    alive = tmp_path / "run" / f".metrics.jsonl.tmp-{os.getpid()}"
    alive.write_text("")
    killed.kill()
    killed.wait()
    with writer_lock(tmp_path / "run", "train"):
        assert not dead.exists() and alive.exists()


def test_a_second_train_into_a_run_folder_being_written_is_refused(dataset, tmp_path, capsys):
    """Two `vivi train` into one --out, the second started before the first wrote a checkpoint:
    the second stops at once naming the first, which goes on and ends with its own run (catches
    two runs' checkpoints, config and metrics mixed in one folder)."""
    from vivi.cli import main
    run = tmp_path / "run"
    common = ["--data", str(dataset), "--out", str(run), "data.videos=4", "data.workers=0", "optim.warmup_steps=2"]
    first = subprocess.Popen([sys.executable, "-m", "vivi.cli", "train", "--config", "tiny-ex-yt-s", *common,
                              "optim.steps=40"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / LOCK_NAME).exists():
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    assert main(["train", "--config", "tiny-rot-yt-f", *common, "optim.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "is being written by `vivi train`" in err and f"pid {first.pid} " in err
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40
    assert not (run / LOCK_NAME).exists()


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, which a shell's background job (a test suite started
    with `make test &`) inherits as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
