"""Image benchmark, one command:  python benchmarks/image.py [--warm] [--runtime onnx|skops]

Cold build (empty base cache), model-only rebuild + import, compressed and unpacked size,
start-to-ready of the container. Needs root, containerd, runc, umoci, mmdebstrap.
--runtime onnx (default): the models are compiled to ONNX as 04_package does, so the image is
the lean one (numpy, onnxruntime, the web stack). Goals (issue 14): <= 70 MB compressed,
<= 60 s cold, ready <= 1 s after start. --runtime skops: the scikit-learn image. Goals: <= 120
MB, <= 90 s cold, ready <= 2 s. Both: <= 3 s model-only rebuild + import.
--warm: use $MLOPS_KIT_CACHE_DIR (or the default cache) instead of an empty one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", action="store_true", help="keep the existing base cache")
    ap.add_argument("--runtime", choices=("onnx", "skops"), default="onnx",
                    help="onnx: compile the models, the lean image (default); skops: the scikit-learn image")
    args = ap.parse_args()
    lean = args.runtime == "onnx"
    goals = {"size": "<= 70 MB" if lean else "<= 120 MB", "cold": "<= 60 s" if lean else "<= 90 s",
             "ready": "<= 1 s" if lean else "<= 2 s"}
    work = Path(tempfile.mkdtemp(prefix="mk-image-bench-"))
    if not args.warm:
        os.environ["MLOPS_KIT_CACHE_DIR"] = str(work / "cache")
    os.environ["MLOPS_KIT_RUNS_DIR"] = str(work / "runs")
    from conftest import train_into
    from test_image_support import make_run, start_containerd, stop_containerd

    from mlops_kit import image as mk_image
    from mlops_kit.params import RunParams

    try:
        sock = start_containerd()
        models = work / "models"
        a = train_into(models / "a", "sklearn:breast_cancer", "target")
        b = train_into(models / "b", "sklearn:breast_cancer", "target", params={"C": 0.5, "max_iter": 1000})
        if lean:
            from mlops_kit.compile import compile_model

            for folder in (a, b):
                if not compile_model(folder).passed:
                    raise SystemExit(f"{folder}: the model did not compile to ONNX")
        params = RunParams()
        params.package.builder = "layers"
        params.package.containerd_socket = str(sock)
        quiet = lambda line: None  # noqa: E731

        t = time.monotonic()
        first = mk_image.package(make_run(work / "runs", a, "bench-a"), params, log=quiet)
        cold = time.monotonic() - t
        t = time.monotonic()
        second = mk_image.package(make_run(work / "runs", b, "bench-b"), params, log=quiet)
        rebuild = time.monotonic() - t
        ready = _start_to_ready(sock, second["ref"], work)
        mb = 1e6
        figures = [
            ("cold build + import (empty cache)" if not args.warm else "first build + import (warm cache)",
             f"{cold:.1f} s", goals["cold"]),
            ("model-only rebuild + import", f"{rebuild:.2f} s (build {second['seconds']['build']:.2f} s, "
             f"import {second['seconds']['import']:.2f} s)", "<= 3 s"),
            ("compressed size", f"{second['size']['compressed'] / mb:.1f} MB "
             f"({second['size']['compressed'] / 2**20:.1f} MiB)", goals["size"]),
            ("unpacked size", f"{second['size']['unpacked'] / mb:.1f} MB", ""),
            ("new layers in the rebuild", ", ".join(f"{l['size'] / 1024:.0f} KiB" for l in second["layers"]
                                                    if l["digest"] not in {x["digest"] for x in first["layers"]}), ""),
            ("container start to ready (median of 5)", f"{ready:.2f} s", goals["ready"]),
        ]
        print(f"image: {'lean (ONNX)' if lean else 'scikit-learn (skops)'}")
        width = max(len(f[0]) for f in figures)
        for name, value, goal in figures:
            print(f"{name:<{width}}  {value}  {goal}")
        return 0
    finally:
        stop_containerd()
        shutil.rmtree(work, ignore_errors=True)


def _start_to_ready(sock, ref: str, work: Path) -> float:
    import statistics
    import subprocess

    from mlops_kit.deploy.local import free_port

    times = []
    for i in range(5):
        port, name = free_port(), f"bench-{os.getpid()}-{i}"
        ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
        t = time.monotonic()
        subprocess.run([*ctr, "run", "-d", "--net-host", "--read-only", "--log-uri", f"file://{work}/{name}.log",
                        "--env", f"PORT={port}", ref, name, "python3", "-m", "mlops_kit.serving", "--model-dir",
                        "/app/model", "--host", "127.0.0.1"], check=True, capture_output=True)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.02)
            if time.monotonic() - t > 60:
                raise SystemExit((work / f"{name}.log").read_text())
        times.append(time.monotonic() - t)
        subprocess.run([*ctr, "task", "kill", "-s", "SIGKILL", name], capture_output=True)
        time.sleep(0.3)
        subprocess.run([*ctr, "task", "rm", "-f", name], capture_output=True)
        subprocess.run([*ctr, "c", "rm", name], capture_output=True)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
