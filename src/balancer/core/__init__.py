"""The vocabulary every concern shares: addresses, termination reasons, error descriptions.

Nothing here does I/O or imports another part of the balancer, so any module may use it.
"""
