"""Helper processes the kit starts and owns (the kernels' parent, the report exporter)."""

from __future__ import annotations

import subprocess


def kill_helper(process: subprocess.Popen) -> None:
    """Kill a helper process (it holds no state worth a graceful exit) and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
