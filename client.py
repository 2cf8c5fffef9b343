"""Send 10 concurrent requests through the balancer and print each response."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from balancer.cli import main

FLAGS = "--target 127.0.0.1:8000 --protocol line --concurrency 10 --requests 10 --show-responses"

sys.exit(main(["client", *FLAGS.split(), *sys.argv[1:]]))
