"""Why a connection ended: one reason per connection, in its access line and the metrics."""

from __future__ import annotations

from enum import StrEnum


class Termination(StrEnum):
    CLIENT_CLOSED = "client_closed"  # the client finished first (EOF or close)
    BACKEND_CLOSED = "backend_closed"  # the backend finished first
    CLIENT_RESET = "client_reset"
    BACKEND_RESET = "backend_reset"
    NO_BACKEND = "no_backend"  # no backend was eligible
    CONNECT_FAILED = "connect_failed"  # every connect attempt failed
    CLIENT_ABORTED = "client_aborted"  # the client left while the backend connect was pending
    IDLE_TIMEOUT = "idle_timeout"  # nothing either way for `timeouts.idle`
    CLIENT_TIMEOUT = "client_timeout"  # nothing from the client for `timeouts.client`
    SERVER_TIMEOUT = "server_timeout"  # nothing from the backend for `timeouts.server`
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"  # the client sent nothing at all in time
    QUEUE_TIMEOUT = "queue_timeout"  # every backend was at max_connections for too long
    QUEUE_FULL = "queue_full"
    DENIED = "denied"  # the client's address is not allowed
    CLIENT_LIMIT = "client_limit"  # the client's address has too many open connections
    RATE_LIMITED = "rate_limited"  # the client's address opens connections too fast
    BAD_PROXY_HEADER = "bad_proxy_header"
    NO_RESOURCES = "no_resources"  # out of descriptors or memory here, not the backend's fault
    SHUTDOWN = "shutdown"


# Who finished first: a later timeout, reset or shutdown of the same connection says more.
FINISHED = (Termination.CLIENT_CLOSED, Termination.BACKEND_CLOSED)
