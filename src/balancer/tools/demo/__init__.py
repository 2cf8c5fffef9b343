"""The demo backend server and the load-generating client that ship with the balancer."""
