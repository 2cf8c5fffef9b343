"""What the balancer tells its operator: the log (`logs`) and the figures behind the admin API
and the metrics (`stats`)."""
