"""Discovery: which backends a service's config names.

A static list gives backends that start up; a port range (`discover`) gives one backend per
port, each starting down until a health check finds it listening.
"""

from __future__ import annotations

from balancer.config.model import BackendConfig, ServiceConfig
from balancer.core.address import Address
from balancer.pool.backend import DOWN, UP


def wanted_backends(config: ServiceConfig) -> dict[Address, tuple[BackendConfig, str]]:
    """Each backend the config names, with its settings and the health it starts with."""
    wanted = {b.address: (b, UP) for b in config.backends}
    if config.discover is not None:
        for address in config.discover.addresses():
            wanted.setdefault(address, (BackendConfig(address), DOWN))
    return wanted
