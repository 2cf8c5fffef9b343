"""The pool: a service's backends with their state, where discovery, health, selection and the
data plane meet (`Pool`, `Backend`), and discovery of the backends a config names."""

from balancer.pool.backend import (
    ADMIN_STATES,
    DOWN,
    DRAIN,
    ENABLED,
    MAINTENANCE,
    UP,
    Backend,
    check_state,
)
from balancer.pool.pool import Algorithm, ChangeListener, Pool

__all__ = [
    "ADMIN_STATES",
    "DOWN",
    "DRAIN",
    "ENABLED",
    "MAINTENANCE",
    "UP",
    "Algorithm",
    "Backend",
    "ChangeListener",
    "Pool",
    "check_state",
]
