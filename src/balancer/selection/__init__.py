"""Selection: which backend takes the next connection.

An algorithm is a small class with two methods. `update` receives the eligible backends after
every membership or state change and builds whatever tables it needs; `candidates` yields
backends for one connection, first choice first, then fallbacks, and never does I/O. Retrying a
failed connect walks that order, so no algorithm knows about retries.

A user's own algorithm is named by dotted path, `package.module.ClassName` or
`package.module:ClassName`.
"""

from __future__ import annotations

import importlib

from balancer.pool.pool import Algorithm
from balancer.selection.least_connections import LeastConnections
from balancer.selection.power_of_two import PowerOfTwo
from balancer.selection.round_robin import RoundRobin
from balancer.selection.source_hash import SourceHash
from balancer.selection.weighted_random import WeightedRandom

REGISTRY: dict[str, type[Algorithm]] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "random": WeightedRandom,
    "power_of_two": PowerOfTwo,
    "source_hash": SourceHash,
}


def resolve(name: str) -> type[Algorithm]:
    """The class for a registered name or a dotted path; ValueError says what is wrong."""
    if name in REGISTRY:
        return REGISTRY[name]
    module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attr:
        known = ", ".join(REGISTRY)
        raise ValueError(f"unknown algorithm {name!r}: expected one of {known}, or a dotted path")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # (ImportError, or whatever the module raised as it ran)
        raise ValueError(
            f"cannot import module {module_name!r} for algorithm {name!r}: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not all(
        callable(getattr(cls, m, None)) for m in ("update", "candidates")
    ):
        raise ValueError(f"{name!r} is not a class with update() and candidates() methods")
    return cls


def create(name: str) -> Algorithm:
    """A new instance; ValueError if the class cannot be made without arguments."""
    cls = resolve(name)
    try:
        return cls()
    except Exception as exc:
        raise ValueError(
            f"algorithm {name!r} cannot be made (it is called with no arguments): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def check_algorithm(name: str) -> str:
    """`name`, once an instance has been made (ValueError if none can be): for the config
    reader and the flags, so that an algorithm that cannot be made is a config error."""
    create(name)
    return name


__all__ = ["REGISTRY", "Algorithm", "check_algorithm", "create", "resolve"]
