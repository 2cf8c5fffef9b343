"""balancer: a TCP (layer 4) load balancer."""

__version__ = "0.1.0"
