"""Peer engines (llama.cpp, vLLM) run in virtualenvs of their own: a bench script re-runs itself there as a worker,
`python SCRIPT --worker FOLDER`, which reads FOLDER/spec.json and writes FOLDER/result.json. Both halves live here;
stdlib only, since the worker side imports it under the peer's environment."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable


def run_worker(python: Path, script: str | Path, spec: dict, env: dict[str, str], what: str) -> dict:
    """Run `python script --worker FOLDER` on spec (JSON-able) with extra environment variables; its result. A
    failing worker raises with the tail of its stderr, naming `what` ran."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([str(python), str(script), "--worker", tmp], env={**os.environ, **env},
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{proc.stderr[-4000:]}")
        return json.loads((Path(tmp) / "result.json").read_text())


def worker_entry(work: Callable[[dict], dict], argv: list[str] | None = None) -> bool:
    """The worker side: when argv (default sys.argv) is `SCRIPT --worker FOLDER`, run work(spec) into result.json and
    return True; otherwise False (the script is being run as a bench)."""
    argv = sys.argv if argv is None else argv
    if len(argv) != 3 or argv[1] != "--worker":
        return False
    folder = Path(argv[2])
    spec = json.loads((folder / "spec.json").read_text())
    (folder / "result.json").write_text(json.dumps(work(spec)))
    return True


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: /proc/self/clear_refs); a no-op where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """This process's peak RSS (VmHWM) since reset_peak_rss, in MiB; None without /proc."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return None
