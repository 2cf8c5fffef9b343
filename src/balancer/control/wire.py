"""How the supervisor and its workers talk: length-prefixed pickles over a socketpair.

Both ends are this program, started from the same installation, so pickle's trust in its
input is the process's trust in itself.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

HEADER = struct.Struct("!I")


def encode(message: object) -> bytes:
    """One message as it goes on the wire."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


async def send(writer: asyncio.StreamWriter, message: object) -> None:
    writer.write(encode(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(size))
