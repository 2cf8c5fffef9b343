"""The access line's one-step text form is the same text the generic line builder makes."""

from __future__ import annotations

from balancer.observability.logs import AccessRecord, EventLog, access_fields


def test_access_line_matches_the_generic_form() -> None:
    log = EventLog(None)
    written: list[str] = []
    def write(line: str, *, flush: bool) -> None:
        written.append(line)

    log._write = write  # type: ignore[method-assign]
    for record in (
        AccessRecord("web", "127.0.0.1:5555", "127.0.0.1:8080", 0.1234, 12.34567, 10, 20, 0,
                     "-", "client_closed"),
        AccessRecord("my svc", "[::1]:80", "-", -1.0, 0.0, 0, 0, 2, "refused,one_client",
                     "no_backend"),
        AccessRecord('q"=x', "", "b\nc", 1e-9, 3600000.0, 1 << 40, 7, 1, "-", "denied"),
    ):  # fmt: skip
        written.clear()
        log.access(record)
        generic = log._line("access", access_fields(record))
        # (the two lines may straddle a millisecond: compare what follows the timestamp)
        assert written[0].split(" ", 1)[1] == generic.split(" ", 1)[1]
