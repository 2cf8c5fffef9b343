"""The fuzz targets run for a bounded time: any disagreement or crash fails the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent.parent / "fuzz"
SECONDS = 20


@pytest.mark.timeout(SECONDS + 60)
def test_proxy_header_parsers_agree_under_fuzzing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(FUZZ / "proxy_header.py"),
            f"-max_total_time={SECONDS}",
            "-seed=1",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 50,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    runs = [line for line in output.splitlines() if line.startswith("Done ")]
    assert runs, output[-3000:]
    assert int(runs[0].split()[1]) > 10_000, runs[0]  # (it did run: millions here)
