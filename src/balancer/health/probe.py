"""Active probes: one check of one backend, over a real connection, cut off by its timeout."""

from __future__ import annotations

import asyncio
import re

from balancer.config.model import HealthCheckConfig
from balancer.core.errors import RESOURCE_ERRORS, describe_error
from balancer.health.checks import MAX_RESPONSE, http_check_request, http_response_status, status_ok
from balancer.pool.backend import Backend
from balancer.protocols import proxy_protocol

SKIPPED = "skipped"  # a check that could not run here (out of descriptors): no verdict


async def probe(
    backend: Backend, check: HealthCheckConfig, send_proxy: str | None = None
) -> str | None:
    """None when the backend passes `check`, else a short description of what went wrong.

    A backend sent the PROXY header (its own `send_proxy`, else the service's) gets one first,
    which says the connection is the balancer's own (as HAProxy's checks do).
    """
    address = backend.address
    version = backend.send_proxy or send_proxy
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            try:
                if version:
                    writer.write(proxy_protocol.build_local(version))
                if check.type == "http":
                    return await _http(reader, writer, check, str(address))
                if check.type == "send_expect":
                    return await _send_expect(reader, writer, check)
                return None
            finally:
                writer.transport.abort()
    except TimeoutError:
        return f"no answer within {check.timeout:g}s"
    except OSError as exc:
        if exc.errno in RESOURCE_ERRORS:
            return SKIPPED  # our own shortage says nothing about the backend
        return describe_error(exc)


async def _http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, check: HealthCheckConfig, host: str
) -> str | None:
    writer.write(http_check_request(check.path, check.host or host))
    data = b""
    while True:
        chunk = await reader.read(4096)
        data += chunk
        try:
            status = http_response_status(data, complete=not chunk)
        except ValueError as exc:
            return str(exc)
        if status is not None:
            if status_ok(status, check.expect_status):
                return None
            return f"http status {status} for {check.path}"
        if len(data) > MAX_RESPONSE:
            return f"no response head in the first {MAX_RESPONSE} bytes"


async def _send_expect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, check: HealthCheckConfig
) -> str | None:
    if check.send:
        writer.write(check.send)
    pattern = re.compile(check.expect.encode())
    data = b""
    while len(data) <= MAX_RESPONSE:
        if pattern.search(data):
            return None
        chunk = await reader.read(4096)
        if not chunk:
            return f"closed without a response matching {check.expect!r} (got {data[:60]!r})"
        data += chunk
    return f"no response matching {check.expect!r} in {MAX_RESPONSE} bytes"
