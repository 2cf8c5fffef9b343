"""`balancer bench`: the harness (`harness`), its options, peers, configs, clients and report,
and the selection micro-benchmark (`selection`)."""
