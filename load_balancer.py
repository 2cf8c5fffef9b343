"""Balance 0.0.0.0:8000 over whatever answers on 127.0.0.1:9001-9009; log to load_balancer.log."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from balancer.cli import main

NO_BACKEND = "HTTP/1.1 503 Service Unavailable\r\n\r\nNo backend servers available\r\n"
FLAGS = "--listen 0.0.0.0:8000 --backend-range 127.0.0.1:9001-9009 --algorithm least_connections"

sys.exit(main(["run", *FLAGS.split(), "--no-backend-message", NO_BACKEND, *sys.argv[1:]]))
