"""Start a demo backend: python3 server.py 9001"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
from balancer.cli import main

sys.exit(main(["backend", *sys.argv[1:]]))
