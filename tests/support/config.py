"""The one builder of config files for tests: TOML text from a few arguments."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

NO_CHECKS = "[services.health_check]\nenabled = false\n"


def backends_list(ports: Iterable[int]) -> str:
    """The value of `backends` for backends on 127.0.0.1."""
    return "[" + ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in ports) + "]"


def service(
    name: str,
    port: int,
    backends: Iterable[int] | str = (),
    extra: str = "",
    *,
    checks: bool | str = True,
) -> str:
    """A [[services]] table on 127.0.0.1:`port`, balancing over `backends` (ports on 127.0.0.1,
    or the TOML value itself), with `extra` lines of its own keys. `checks` is False for no
    health checks, or the lines of its [services.health_check] table."""
    text = f'[[services]]\nname = "{name}"\nlisten = "127.0.0.1:{port}"\n'
    value = backends if isinstance(backends, str) else backends_list(backends)
    if value != "[]":  # (a service with `discover` alone)
        text += f"backends = {value}\n"
    if extra:
        text += extra.strip("\n") + "\n"
    if checks is False:
        text += NO_CHECKS
    elif isinstance(checks, str):
        text += "[services.health_check]\n" + checks.strip("\n") + "\n"
    return text


def config_text(
    *services: str, log: Path | None = None, admin: int | None = None, top: str = ""
) -> str:
    """A whole file: top-level keys, the [admin] table on 127.0.0.1:`admin`, the log file,
    then the services."""
    parts = [top.strip("\n") + "\n"] if top else []
    if admin is not None:
        parts.append(f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    if log is not None:
        parts.append(f'[log]\nfile = "{log}"\n')
    parts.extend(services)
    return "".join(parts)


def write_config(
    path: Path, *services: str, log: Path | None = None, admin: int | None = None, top: str = ""
) -> Path:
    """`config_text` written to `path`; returns `path`."""
    path.write_text(config_text(*services, log=log, admin=admin, top=top))
    return path
