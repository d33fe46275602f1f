"""``vivi torchrun``: torchrun for vivi's commands, with the rendezvous endpoint checked first.

    vivi torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD:29500 \\
        --rdzv-id job1 train --config vivi-ex4 --data DATA --out RUN

takes torchrun's options (``torch.distributed.run``, unchanged) followed by a vivi command and its
arguments, and runs ``torchrun ... -m vivi.cli COMMAND ...``. Before the agent starts, a node
whose rendezvous endpoint is another machine waits at most :data:`WAIT_S` seconds for it to
answer: torchrun itself retries an endpoint that never answers for many minutes and prints
stack traces, while a wrong host, port or firewall deserves one line at once. A worker that
fails is named in one line too (its own output is above it).
"""
from __future__ import annotations

import os
import socket
import sys
import time

WAIT_S = float(os.environ.get("VIVI_RDZV_WAIT_S", "30"))


def _local(host: str) -> bool:
    """Whether ``host`` is this machine (its agent then serves the rendezvous itself)."""
    if host in ("", "localhost") or host.startswith("127."):
        return True
    names = {socket.gethostname(), socket.getfqdn()}
    if host in names:
        return True
    try:
        mine = {info[4][0] for name in names for info in socket.getaddrinfo(name, None)}
        return bool(mine & {info[4][0] for info in socket.getaddrinfo(host, None)})
    except OSError:
        return False


def check_endpoint(endpoint: str, wait_s: float = WAIT_S) -> None:
    """Raise ConnectionError, in one line naming ``endpoint``, when another machine's rendezvous
    endpoint does not answer within ``wait_s`` seconds (its agent may start a little later than
    this one, as the nodes of a job do)."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        host, port = endpoint.strip("[]"), "29400"        # torchrun's default port for c10d
    if _local(host):
        return
    deadline, error = time.monotonic() + wait_s, None
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))).close()
            return
        except OSError as failure:
            error = failure
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    reason = (error.strerror or str(error)) if error is not None else "no answer"
    raise ConnectionError(f"the rendezvous endpoint {host}:{port} did not answer within {wait_s:g} s ({reason}): "
                          "start the job's first node, check --rdzv-endpoint and that the port is open between "
                          "the machines")


def main(argv: list[str]) -> int:
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    args = run.get_args_parser().parse_args(argv)
    if args.module or args.no_python or args.training_script.endswith(".py"):
        print("vivi torchrun: error: give a vivi command (train, ...) after torchrun's options, not a script or "
              "-m module", file=sys.stderr)
        return 2
    args.training_script_args = [args.training_script, *args.training_script_args]
    args.training_script, args.module = "vivi.cli", True
    try:
        if args.rdzv_endpoint and not args.standalone and args.rdzv_backend != "static":
            check_endpoint(args.rdzv_endpoint)
        run.run(args)
    except ConnectionError as error:
        print(f"vivi torchrun: error: {error}", file=sys.stderr)
        return 2
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        print(f"vivi torchrun: error: rank {rank} (pid {failure.pid} on {failure.hostname}) exited with status "
              f"{failure.exitcode}; its output is above", file=sys.stderr)
        return 1
    return 0
