"""Child processes of the desk (nats-server, services, strategies) die with their parent."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM when the parent dies (Linux), so a killed
    ``desk up``, orchestrator or test run never leaves a server or strategy behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass
