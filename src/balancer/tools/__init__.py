"""Tools that ship beside the product and are never on its path: the benchmark harness
(`bench`) with its reference relays (`floors`), the demo backend, client and launcher
(`demo`), and the /proc readings both the harness and the tests take (`procfs`)."""
