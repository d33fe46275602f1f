"""Stopping on request: Ctrl-C (SIGINT) and the SIGTERM that schedulers, docker, Kubernetes and
systemd send before they kill a process.

Both end a command the same way: what is complete stays, nothing half-written is left, and the
same command resumes. The exit status tells them apart, as shells do: 130 for SIGINT, 143
(128 + 15) for SIGTERM.
"""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised where SIGTERM stopped a command (a KeyboardInterrupt, so every clean-up made for
    Ctrl-C runs for it too)."""


EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def raise_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED
