"""Fuzz target: the data plane's PROXY header parser (rust/src/proxy.rs), through the binding,
against the Python one (balancer.protocols.proxy_protocol) on the same input.

Both must agree on every input: the same need for more bytes, the same header and length, or
both refusing. A panic in the Rust parser would end the process (atheris reports it).

    python tests/fuzz/proxy_header.py -max_total_time=60 [corpus dir]
"""

from __future__ import annotations

import sys
from typing import Any

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from balancer import _dataplane
    from balancer.protocols import proxy_protocol

SEEDS = (
    b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\nGET /",
    b"PROXY TCP6 2001:db8::1 ::1 5000 443\r\n",
    b"PROXY UNKNOWN\r\n",
    proxy_protocol.build_v2(("10.0.0.1", 1), ("10.0.0.2", 2)),
    proxy_protocol.build_v2(("2001:db8::1", 1), ("::1", 2)),
    proxy_protocol.build_local("v2"),
)


def check(data: bytes) -> None:
    python: Any
    rust: Any
    try:
        python = proxy_protocol.parse(data)
    except proxy_protocol.ProxyProtocolError:
        python = "refused"
    try:
        rust = _dataplane.parse_proxy(data)
    except ValueError:
        rust = "refused"
    if python == "refused" or rust == "refused" or python is None or rust is None:
        assert python == rust, (data, python, rust)
        return
    assert not isinstance(python, str) and not isinstance(rust, str)
    header, length = python
    version, source, destination, rust_length = rust
    assert (header.version, header.source, header.destination, length) == (
        version,
        source,
        destination,
        rust_length,
    ), (data, python, rust)


def main() -> None:
    for seed in SEEDS:
        check(seed)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
