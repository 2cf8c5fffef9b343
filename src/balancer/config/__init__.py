"""The configuration: read once from TOML or flags, validated whole, then immutable.

`model` holds its shape, `values` the converters for single values (shared with the flags),
`parse` the reader that names every bad key and value.
"""

from balancer.config.model import (
    DEFAULT_ADMIN,
    MAX_WEIGHT,
    MAX_WORKERS,
    AdminConfig,
    BackendConfig,
    Config,
    DiscoveryConfig,
    HealthCheckConfig,
    Limits,
    LogConfig,
    PassiveConfig,
    ServiceConfig,
    Timeouts,
)
from balancer.config.parse import ConfigError, known_keys, load_config, parse_config
from balancer.config.values import (
    check_service_name,
    parse_duration,
    parse_port_range,
    parse_status_ranges,
    parse_workers,
)

__all__ = [
    "DEFAULT_ADMIN",
    "MAX_WEIGHT",
    "MAX_WORKERS",
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "HealthCheckConfig",
    "Limits",
    "LogConfig",
    "PassiveConfig",
    "ServiceConfig",
    "Timeouts",
    "check_service_name",
    "known_keys",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_port_range",
    "parse_status_ranges",
    "parse_workers",
]
