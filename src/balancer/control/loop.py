"""The event loop, chosen in one place.

The standard asyncio loop is the default. uvloop is used only when asked for with
BALANCER_LOOP=uvloop and installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    if os.environ.get("BALANCER_LOOP") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
