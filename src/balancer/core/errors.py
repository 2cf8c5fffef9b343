"""How the balancer names an OS error in its log lines and health reasons."""

from __future__ import annotations

import errno
import os

# Errors that say this process is short of descriptors or memory: not a peer's fault.
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def describe_error(exc: BaseException | None) -> str:
    """A short lower-case description, as "connection refused" or "connect timeout"."""
    if exc is None:
        return "closed"
    if isinstance(exc, TimeoutError) and not exc.errno:
        return "connect timeout"  # (Dial's own; an ETIMEDOUT from the kernel is named below)
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:  # (a resolver's are not)
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
