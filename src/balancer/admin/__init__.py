"""The admin HTTP server: the REST API (`server`), the Prometheus metrics (`metrics`), the
live dashboard (`static/`), and `balancer status`, the API's terminal client (`status`)."""
