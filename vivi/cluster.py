"""Ray: a shard per task on a cluster of machines, or on a local Ray instance.

``vivi ingest --ray`` and ``vivi detect --ray`` hand each shard to :func:`run_tasks`: a task does
the whole shard where it runs (decodes its videos or detects its boxes, writes the shard's files
atomically) and returns a small summary; the caller's process only plans, shows the progress and
writes the dataset's summary files. Ray is optional (``pip install 'vivi[ray]'``) and imported
only here, when a command asks for it.

Retries: a task whose worker process dies (killed, out of memory, its machine lost) runs again,
up to ``max_retries`` times (a shard is written atomically, so a half-written one is redone from
scratch). A video that cannot be decoded is not a task failure: the task reports it as that
video's failure, as a run in one process does.
"""
from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

# The environment a task needs from the caller's: the object store's endpoint and credentials,
# and vivi's own settings (the machines of a cluster do not share the caller's shell).
FORWARDED_PREFIXES = ("AWS_", "GOOGLE_", "GCSFS_", "FSSPEC_", "VIVI_")
LOCAL_CPUS = "VIVI_RAY_CPUS"     # CPUs of a local Ray instance (default: all of this machine's)
CONNECT_TIMEOUT_S = 10.0


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'vivi[ray]'") from None
    return ray


def forwarded_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environment`` (default: this process's) that tasks get."""
    environment = os.environ if environment is None else environment
    return {k: v for k, v in environment.items() if k.startswith(FORWARDED_PREFIXES)}


def _check_reachable(address: str) -> None:
    """Fail in seconds, in one line, when nothing listens at ``address`` (Ray itself waits 30 s
    or more and logs many lines before it gives up)."""
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray {address}: not a Ray address; use ray://HOST:10001, HOST:6379, auto, or "
                         "--ray alone for a local instance")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address} ({error.strerror or error}): check the "
                              "address and that the cluster is up (`ray status` on its head node)") from None


@contextmanager
def connected(address: str) -> Iterator[Any]:
    """The ``ray`` module, connected to the cluster at ``address`` ("local": a local instance
    started here, with ``$VIVI_RAY_CPUS`` CPUs if set) for the block; a connection made by the
    caller before (``ray.init``) is used as it is and left open."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    if address == "local":
        cpus = os.environ.get(LOCAL_CPUS)
        kwargs = {"num_cpus": int(cpus)} if cpus else {}
    else:
        if address != "auto":
            _check_reachable(address)
        kwargs = {"address": address}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    except ConnectionError as error:
        raise ConnectionError(f"cannot connect to the Ray cluster at {address}: {str(error).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def largest_node_cpus(ray) -> int:
    """CPUs of the cluster's largest machine: a task asking for more would never be scheduled."""
    return int(max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=1)) or 1


def run_tasks(ray, function: Callable, arguments: Iterable[tuple], *, num_cpus: float = 1, num_gpus: float = 0,
              max_retries: int = 3, ordered: bool = False, progress: Callable[[Any], None] | None = None,
              on_crash: Callable[..., Any] | None = None, in_flight: int | None = None) -> Iterator[Any]:
    """Run ``function(*args)`` as a Ray task for each ``args`` of ``arguments``; yield the results
    as the tasks finish (``ordered``: in the order of ``arguments``).

    ``num_cpus``/``num_gpus``: the resources each task holds. A task whose worker dies runs again
    up to ``max_retries`` times; after that its result is ``on_crash(*args)`` (without it, the
    error is raised). An exception raised by ``function`` is not retried: it stops the run,
    raised here as it was raised there. At most ``in_flight`` tasks (default: twice the
    cluster's CPUs) are submitted at a time, so a plan of a million videos is not held by Ray at
    once. ``progress(result)`` is called as each result arrives.
    """
    remote = ray.remote(function).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries, retry_exceptions=False,
        runtime_env={"env_vars": forwarded_environment()})
    if in_flight is None:
        in_flight = max(4, 2 * int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1)))
    submitted: deque = deque()          # (ref, args) in the order of ``arguments``
    arguments = iter(arguments)
    try:
        while True:
            for args in arguments:
                submitted.append((remote.remote(*args), args))
                if len(submitted) >= in_flight:
                    break
            if not submitted:
                return
            if ordered:
                ref, args = submitted.popleft()
            else:
                [ref], _ = ray.wait([ref for ref, _ in submitted], num_returns=1)
                args = next(a for r, a in submitted if r == ref)
                submitted.remove((ref, args))
            try:
                result = _get(ray, ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
                if on_crash is None:
                    raise
                result = on_crash(*args)
            if progress is not None:
                progress(result)
            yield result
    finally:
        for ref, _ in submitted:       # an error, Ctrl-C or the caller stopped reading: free the cluster
            ray.cancel(ref, force=True)


def _get(ray, ref) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        # the task's own exception (a full disk, a bad detector spec), without Ray's wrapping
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
