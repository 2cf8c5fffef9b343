"""floor.c built with the machine's C compiler, for the harness's `cfloor` target."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path


def build_cfloor(directory: Path) -> tuple[Path | None, str]:
    """Compile floor.c (shipped with the package) into `directory`: the binary, or None and why."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) to build floor.c"
    source = resources.files("balancer.tools.floors") / "floor.c"
    binary = directory / "cfloor"
    with resources.as_file(source) as path:
        try:
            built = subprocess.run(
                [compiler, "-O2", "-o", str(binary), str(path)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"floor.c could not be built: {exc}"
    if built.returncode != 0:
        return None, f"floor.c could not be built: {built.stderr.strip()[-500:]}"
    return binary, ""
