"""Benchmark: the model server under a real load generator against the in-process limit.

    python benchmarks/serving.py [--model-dir DIR] [--duration 10] [--connections 32]

The default model (parameters/default.yaml: breast cancer, logistic regression) is trained
into a temporary folder unless --model-dir names one. Then, for 1-row and 100-row requests:

- in-process limit (BLAS limited to 1 thread, as in the server): one Python loop doing what a caller of the model would do, with no
  HTTP: ``orjson.loads`` + a DataFrame of the schema's columns + ``model.predict`` +
  ``orjson.dumps`` (what the issue calls JSON parse + predict + JSON out);
- in-process handler: the server's own path without HTTP (validation + numpy fast path +
  predictions and probabilities + JSON), to show what HTTP costs;
- the server: ``python -m mlops_kit.serving`` (1 worker) on 127.0.0.1 under ``wrk`` (Debian's
  package) with 32 connections, 1 wrk thread (the other core is the server's), a Lua
  script for the POST body, after a short warm-up run.

Prints requests/s, p50 and p99 for each, and the ratios server / in-process (rows/s for
100-row requests). Goals (issue 4): >= 0.8x the in-process limit for 1 row, p99 <= 50 ms,
>= 0.6x in-process rows/s for 100 rows. Figures on a shared 2-core machine vary by 10-20%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parent.parent


def train_default(folder: Path) -> Path:
    from mlops_kit import data, train
    from mlops_kit.params import load_params

    p = load_params().params
    dataset = data.load_dataset(p.data.source, p.data.target)
    checked = data.validate_dataset(dataset, task=p.task, min_rows=p.data.min_rows, test_size=p.data.test_size)
    schema = data.infer_schema(checked, p.data.target)
    train_rows, test_rows = data.split_dataset(checked, p.data.target, test_size=p.data.test_size, seed=p.seed)
    data.save_splits(train_rows, test_rows, schema, folder)
    train_rows, test_rows, schema = data.load_splits(folder)
    result = train.train_model(train_rows, schema, model=p.train.model, params=p.train.params, seed=p.seed)
    train.save_trained(result, schema, test_rows, folder, model=p.train.model, params=p.train.params, seed=p.seed)
    return folder


def request_bodies(folder: Path) -> dict[int, bytes]:
    """1-row and 100-row bodies from the test split (records, as clients send them)."""
    import pandas as pd

    from mlops_kit.train import features_and_target

    schema = json.loads((folder / "schema.json").read_text())
    X, _ = features_and_target(pd.read_parquet(folder / "test.parquet"), schema)
    records = [{k: (None if v != v else (v.item() if hasattr(v, "item") else v)) for k, v in r.items()}
               for r in X.to_dict(orient="records")]
    while len(records) < 100:
        records += records
    return {1: orjson.dumps(records[:1]), 100: orjson.dumps(records[:100])}


def time_loop(call, seconds: float) -> dict[str, float]:
    """Calls per second and per-call latency percentiles of ``call`` in a tight loop."""
    for _ in range(20):
        call()
    latencies = []
    end = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        call()
        done = time.perf_counter()
        latencies.append(done - started)
        if done > end:
            break
    latencies.sort()
    return {"rps": len(latencies) / sum(latencies), "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3}


def in_process(folder: Path, bodies: dict[int, bytes], seconds: float) -> dict[str, dict[int, dict]]:
    import pandas as pd

    from mlops_kit.model_io import load_model
    from mlops_kit.serving import create_app

    schema = json.loads((folder / "schema.json").read_text())
    names = [f["name"] for f in schema["features"]]
    model = load_model(folder)
    service = create_app(folder).state.service

    def limit(body: bytes) -> bytes:
        frame = pd.DataFrame(orjson.loads(body), columns=names)
        return orjson.dumps({"predictions": model.predict(frame).tolist()})

    def handler(body: bytes) -> bytes:
        batch = service.schema.parse(service.schema.load_json(body))
        predictions, probabilities = service.predictor.predict(batch)
        return orjson.dumps({"predictions": predictions.tolist(), "classes": service.predictor.classes,
                             "probabilities": probabilities}, option=orjson.OPT_SERIALIZE_NUMPY)

    return {"limit": {n: time_loop(lambda b=b: limit(b), seconds) for n, b in bodies.items()},
            "handler": {n: time_loop(lambda b=b: handler(b), seconds) for n, b in bodies.items()}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(folder),
                                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit("the server did not become ready in 60 s")


LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def run_wrk(url: str, body: bytes, *, seconds: float, connections: int, workdir: Path) -> dict[str, float]:
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = workdir / f"post-{len(body)}.lua"
    script.write_text(LUA.format(body=body_file))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
               f"{url}/predict"]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=seconds + 60).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        sys.exit(f"the server answered {errors.group(1)} requests with an error:\n{output}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)),
            "p99": _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: train the default model)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="mlops-kit-bench-") as tmp:
        workdir = Path(tmp)
        folder = args.model_dir or train_default(workdir / "model")
        bodies = request_bodies(folder)
        print(f"model: {folder}  rows per request: {sorted(bodies)}  duration: {args.duration:g} s each", flush=True)
        with threadpool_limits(limits=1):  # as in the server (see mlops_kit.serving.app)
            local = in_process(folder, bodies, args.duration)
        process, url = start_server(folder)
        try:
            served = {}
            for rows, body in bodies.items():
                run_wrk(url, body, seconds=2, connections=args.connections, workdir=workdir)  # warm-up
                served[rows] = run_wrk(url, body, seconds=args.duration, connections=args.connections,
                                       workdir=workdir)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    print()
    print(f"{'':34s}{'req/s':>10s}{'rows/s':>11s}{'p50 ms':>9s}{'p99 ms':>9s}")
    for rows in bodies:
        for label, figures in (("in-process limit", local["limit"][rows]),
                               ("in-process handler (no HTTP)", local["handler"][rows]),
                               (f"server, wrk -c{args.connections}", served[rows])):
            print(f"{rows:>3d} row{'s' if rows > 1 else ' '} {label:26s}{figures['rps']:10.0f}{figures['rps'] * rows:11.0f}"
                  f"{figures['p50']:9.2f}{figures['p99']:9.2f}")
    print()
    one, hundred = served[1]["rps"] / local["limit"][1]["rps"], served[100]["rps"] / local["limit"][100]["rps"]
    print(f"1 row:    server / in-process limit = {one:.2f}x (goal >= 0.8x); "
          f"server / handler = {served[1]['rps'] / local['handler'][1]['rps']:.2f}x; "
          f"p99 {served[1]['p99']:.1f} ms (goal <= 50 ms)")
    print(f"100 rows: server / in-process limit rows/s = {hundred:.2f}x (goal >= 0.6x); "
          f"server / handler = {served[100]['rps'] / local['handler'][100]['rps']:.2f}x; "
          f"p99 {served[100]['p99']:.1f} ms")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
