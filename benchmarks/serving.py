"""Benchmark: the kit's server against MLflow, a minimal server and the in-process limit.

    python benchmarks/serving.py [--model-dir DIR] [--duration 10] [--rounds 3] [--connections 32] [--no-mlflow]

The default model (parameters/default.yaml: breast cancer, logistic regression, 30 features)
is trained into a temporary folder unless --model-dir names one, and compiled to ONNX as
04_package does. Then, in ONE run (the machine is shared: compare ratios, not figures across
runs), for 1-row and 100-row requests under ``wrk -t1 -c32`` (Debian's wrk; one core for wrk,
one for the server), each server with 1 process (the ratios and goals compare those):

- the kit's server on the ONNX model (onnxruntime; what the lean image runs);
- the same on uvloop (``--loop uvloop``; the default is asyncio's loop, for its tail);
- the kit's server on the ONNX model with ``--workers 2`` (both cores, shared with wrk: what
  one server without Kubernetes replicas can do; not used in the ratios);
- monitoring (issue 21): the kit's server on the ONNX model with monitoring off (a copy of
  the model folder without ``monitor_profile.json``: no live bins), on (the live bins are
  always on when the profile is there: the plain ONNX rows count them too) and on with a
  request log (``--log-requests DIR --log-sample 0.1``);
- the kit's server with the model call stubbed (``benchmarks/_stub_model_server.py``: the
  first answer for that many rows given again): what HTTP, parsing, validation and the JSON
  answer cost without the model - the most any model could reach behind this server;
- the kit's server on the skops model (``--runtime skops``);
- a minimal Starlette server: JSON -> pandas DataFrame -> the scikit-learn pipeline
  (``benchmarks/_minimal_starlette.py``);
- MLflow's ``models serve`` (``--env-manager local``) on the same model saved with
  ``mlflow.sklearn``; MLflow lives only in a venv of its own (``/tmp/mlflow-venv``, made on
  first use with pip; never a kit dependency) - when it cannot be installed the row says so;
- the in-process limit: the fastest known call of the same model, onnxruntime's
  ``session.run`` on input arrays prepared once (no JSON, no validation, no HTTP);
- the HTTP ceiling: an empty ASGI app under the same uvicorn and event loop (asyncio's, the
  kit's default; ``benchmarks/_empty_asgi.py``: reads the body, answers a constant) - what
  one Python process can answer at all, before any JSON or model work.

All servers run at once and are measured in interleaved rounds (one after the other, round
after round); each figure is the median over the rounds, so load from other processes that
drifts over minutes weighs on every server alike. Prints req/s, rows/s, p50/p99 and the
ratios, and each server's CPU time per request (its processes' user + system time over the
measurement, from /proc, divided by the requests wrk counted): on a shared machine the
requests/s move with the others' load, the CPU a request costs much less, so the monitoring
goals are also stated as the ratio of CPU per request (off / on: the requests/s a server
saturating its own core would keep). Goals (issue 14): >= 30x MLflow (1 row),
>= 20x (100 rows), >= 0.7x the in-process limit, p99 <= 5x p50; (issue 21) monitoring on
(bins, sample 0.1) >= 0.9x the requests/s of monitoring off at 1 row, >= 0.95x at 100 rows.
``--only A,B`` measures only the servers whose label contains one of the words (a shared
machine: ``--only monitoring`` for the monitoring rows alone).
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
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent


def train_default(workdir: Path) -> Path:
    """The default model, made as users make it: ``mlops-kit run`` (data, train, evaluate)
    into a runs folder of its own; returns the run's ``artifacts/``."""
    runs = workdir / "runs"
    done = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "run", "--stages", "data,train,evaluate",
                           "--no-cache", "--json"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MLOPS_KIT_RUNS_DIR": str(runs)})
    if done.returncode != 0:
        sys.exit(f"mlops-kit run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    (run,) = [path for path in runs.iterdir() if (path / "artifacts").is_dir()]
    return run / "artifacts"


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


def in_process_limit(folder: Path, bodies: dict[int, bytes], seconds: float) -> dict[int, dict]:
    """onnxruntime on arrays prepared once: the fastest call of the model there is."""
    from mlops_kit import artifacts
    from mlops_kit.serving._onnx import OnnxModel, load, read_verified
    from mlops_kit.serving._validation import RequestSchema

    report = load(artifacts.ONNX_REPORT, folder)
    schema = load(artifacts.SCHEMA, folder).to_json()
    model = OnnxModel(read_verified(folder / artifacts.ONNX_MODEL.name, report.sha256), report, schema["features"])
    parser = RequestSchema(schema, max_rows=1000)
    results = {}
    for rows, body in bodies.items():
        feeds = model.feed(parser.parse(orjson.loads(body)))
        results[rows] = time_loop(lambda f=feeds: model.session.run(model.wanted, f), seconds)
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(command: list[str], url: str, ready: str, *, timeout: float = 120,
                 env: dict | None = None) -> subprocess.Popen:
    # the log goes to a file: a pipe nobody reads fills up (64 kB) and then blocks a server
    # that logs every request (MLflow's uvicorn does), which then answers nothing
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            sys.exit(f"{command[:4]} exited with {process.returncode}:\n{log.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}{ready}", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit(f"{command[:4]} did not become ready in {timeout:g} s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


MLFLOW_VENV = Path("/tmp/mlflow-venv")


def mlflow_model(folder: Path, workdir: Path) -> tuple[Path | None, str]:
    """The model saved by MLflow in its own venv (made on first use), or None and why."""
    from importlib import metadata

    python = MLFLOW_VENV / "bin" / "python"
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        print(f"installing MLflow into {MLFLOW_VENV} (once) ...", flush=True)
        pins = [f"{n}=={metadata.version(n)}" for n in ("scikit-learn", "numpy", "scipy", "skops")]
        try:
            subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "mlflow", "pandas", *pins], check=True,
                           capture_output=True, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(MLFLOW_VENV, ignore_errors=True)
            return None, f"MLflow could not be installed ({str(getattr(exc, 'stderr', b'') or exc)[-300:]})"
    out = workdir / "mlflow-model"
    done = subprocess.run([str(python), str(REPO / "benchmarks" / "_mlflow_model.py"), str(folder), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"MLflow could not save the model: {done.stderr[-300:]}"
    return out, ""


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
    # a generous timeout: a slow server's requests are measured, not dropped as errors
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "--latency",
               "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=seconds + 60).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", output)
    if timeouts and int(timeouts.group(1)):
        print(f"    ({timeouts.group(1)} requests timed out after 30 s: not counted)", flush=True)
    if errors:
        sys.exit(f"the server answered {errors.group(1)} requests with an error:\n{output}")
    if not float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)):
        sys.exit(f"{url} answered no request in {seconds:g} s:\n{output}")
    return {"requests": float(re.search(r"(\d+) requests in", output).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1)),
            "p99": _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (``--workers``), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        pids += [int(child) for child in task.read_text().split()]
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks    # utime, stime (fields 14 and 15)
    return total


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    import statistics

    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: train the default model)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per server; medians (default 3)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the MLflow row")
    parser.add_argument("--only", default="", help="comma-separated words: only the servers whose label has one")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    from mlops_kit.compile import compile_model

    with tempfile.TemporaryDirectory(prefix="mlops-kit-bench-") as tmp:
        workdir = Path(tmp)
        folder = args.model_dir or train_default(workdir)
        report = compile_model(folder)
        if not report.passed:
            sys.exit(f"the model did not compile to ONNX: {report.reason}")
        bodies = request_bodies(folder)
        print(f"model: {folder}  rows per request: {sorted(bodies)}  duration: {args.duration:g} s each", flush=True)
        limit = in_process_limit(folder, bodies, args.duration)

        unprofiled = workdir / "no-profile"   # monitoring off: the model without its profile
        shutil.copytree(folder, unprofiled, ignore=shutil.ignore_patterns("monitor_profile.json", "run.json"))
        kit = [sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(folder), "--host", "127.0.0.1",
               "--log-level", "warning", "--port"]
        servers: list[tuple[str, Any, str, str, Any]] = [
            ("HTTP ceiling (empty ASGI app)", lambda port: [sys.executable, "-m", "uvicorn", "--app-dir",
                                                            str(REPO / "benchmarks"), "_empty_asgi:app", "--port",
                                                            str(port), "--log-level", "warning", "--no-access-log",
                                                            "--loop", "asyncio"],
             "/predict", "/", None),
            ("kit server, ONNX", lambda port: [*kit, str(port), "--runtime", "onnx"], "/predict", "/v2/health/ready",
             None),
            ("kit server, ONNX, uvloop", lambda port: [*kit, str(port), "--runtime", "onnx", "--loop", "uvloop"],
             "/predict", "/v2/health/ready", None),
            ("kit server, ONNX, 2 workers", lambda port: [*kit, str(port), "--runtime", "onnx", "--workers", "2"],
             "/predict", "/v2/health/ready", None),
            ("kit server, ONNX, monitoring off", lambda port: [
                *kit[:kit.index("--model-dir") + 1], str(unprofiled), *kit[kit.index("--model-dir") + 2:], str(port),
                "--runtime", "onnx"], "/predict", "/v2/health/ready", None),
            ("kit server, ONNX, monitoring on (bins only)", lambda port: [*kit, str(port), "--runtime", "onnx"],
             "/predict", "/v2/health/ready", None),
            ("kit server, ONNX, monitoring on (sample 0.1)", lambda port: [
                *kit, str(port), "--runtime", "onnx", "--log-requests", str(workdir / "requests"), "--log-sample",
                "0.1"], "/predict", "/v2/health/ready", None),
            ("kit server, model call stubbed", lambda port: [
                sys.executable, str(REPO / "benchmarks" / "_stub_model_server.py"), str(folder), str(port)],
             "/predict", "/v2/health/ready", None),
            ("kit server, skops", lambda port: [*kit, str(port), "--runtime", "skops"], "/predict",
             "/v2/health/ready", None),
            ("minimal Starlette+pandas", lambda port: [sys.executable, str(REPO / "benchmarks" / "_minimal_starlette.py"),
                                                      str(folder), str(port)], "/predict", "/v2/health/ready", None),
        ]
        wanted = [word.strip() for word in args.only.split(",") if word.strip()]
        if wanted:
            servers = [server for server in servers if any(word in server[0] for word in wanted)]
        skipped = {}
        if not args.no_mlflow and (not wanted or any(word in "MLflow models serve" for word in wanted)):
            saved, why = mlflow_model(folder, workdir)
            if saved is None:
                skipped["MLflow models serve"] = why
            else:
                servers.append(("MLflow models serve", lambda port: [
                    str(MLFLOW_VENV / "bin" / "mlflow"), "models", "serve", "-m", str(saved), "--env-manager",
                    "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"], "/invocations", "/ping",
                    lambda body: orjson.dumps({"dataframe_records": orjson.loads(body)})))
        # every server up at once (idle ones cost nothing), then measured in rounds, one
        # server after the other: load from other processes drifts over minutes, and the
        # median of interleaved rounds compares the servers under the same drift
        running: list[tuple[str, str, Any, subprocess.Popen]] = []
        try:
            for label, command, path, ready, wrap in servers:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                env = {"PATH": f"{MLFLOW_VENV / 'bin'}:{os.environ.get('PATH', '')}"} if "MLflow" in label else None
                running.append((label, url + path, wrap, start_server(command(port), url, ready, env=env)))
            rounds: dict[str, dict[int, list[dict]]] = {label: {rows: [] for rows in bodies} for label, *_ in running}
            for index in range(args.rounds):
                for rows, body in bodies.items():
                    for label, url, wrap, process in running:
                        sent = wrap(body) if wrap else body
                        if index == 0:
                            run_wrk(url, sent, seconds=2, connections=args.connections, workdir=workdir)  # warm-up
                        before = cpu_seconds(process.pid)
                        result = run_wrk(url, sent, seconds=args.duration, connections=args.connections,
                                         workdir=workdir)
                        result["cpu_us"] = (cpu_seconds(process.pid) - before) / result.pop("requests") * 1e6
                        rounds[label][rows].append(result)
                print(f"  round {index + 1} of {args.rounds} measured", flush=True)
        finally:
            for *_, process in running:
                stop_server(process)
        served = {label: {rows: _median(results) for rows, results in by_rows.items()}
                  for label, by_rows in rounds.items()}
    print()
    labels = ["in-process limit (onnxruntime)", *(f"{name}, wrk -c{args.connections}" for name in served)]
    width = max(map(len, labels)) + 2
    print(f"median of {args.rounds} rounds of {args.duration:g} s")
    print(f"{'':{width + 9}s}{'req/s':>10s}{'rows/s':>11s}{'p50 ms':>9s}{'p99 ms':>9s}{'p99/p50':>9s}"
          f"{'CPU us/req':>11s}")
    for rows in bodies:
        for label, figures in zip(labels, [limit[rows], *(s[rows] for s in served.values())]):
            cpu = f"{figures['cpu_us']:11.0f}" if "cpu_us" in figures else f"{'-':>11s}"
            print(f"{rows:>3d} row{'s' if rows > 1 else ' '} {label:{width}s}{figures['rps']:10.0f}"
                  f"{figures['rps'] * rows:11.0f}{figures['p50']:9.2f}{figures['p99']:9.2f}"
                  f"{figures['p99'] / max(figures['p50'], 1e-9):9.1f}{cpu}")
    for name, why in skipped.items():
        print(f"    {name}: not measured: {why}")
    print()
    off, on = served.get("kit server, ONNX, monitoring off"), served.get("kit server, ONNX, monitoring on (sample 0.1)")
    bins = served.get("kit server, ONNX, monitoring on (bins only)")
    if off and on:
        for rows, goal in zip(bodies, (0.9, 0.95)):
            print(f"{rows:>3d} row{'s' if rows > 1 else ' '}: monitoring on (bins, sample 0.1) = "
                  f"{on[rows]['rps'] / off[rows]['rps']:.2f}x the requests/s of monitoring off (goal >= {goal}x)"
                  + (f"; bins only {bins[rows]['rps'] / off[rows]['rps']:.2f}x" if bins else "")
                  + f"; per CPU: {off[rows]['cpu_us'] / on[rows]['cpu_us']:.2f}x"
                  + (f", bins only {off[rows]['cpu_us'] / bins[rows]['cpu_us']:.2f}x" if bins else ""))
    ours = served.get("kit server, ONNX")
    for rows in bodies if ours else ():
        parts = [f"{ours[rows]['rps'] / limit[rows]['rps']:.2f}x the in-process limit (goal >= 0.7x)"]
        stub = served.get("kit server, model call stubbed")
        if stub:
            parts.append(f"(stubbed model call: {stub[rows]['rps'] / limit[rows]['rps']:.2f}x the limit)")
        for other, goal in (("MLflow models serve", 30 if rows == 1 else 20), ("minimal Starlette+pandas", None),
                            ("kit server, skops", None), ("HTTP ceiling (empty ASGI app)", None)):
            if other in served:
                parts.append(f"{ours[rows]['rps'] / served[other][rows]['rps']:.1f}x {other}"
                             + (f" (goal >= {goal}x)" if goal else ""))
        parts.append(f"p99/p50 {ours[rows]['p99'] / ours[rows]['p50']:.1f} (goal <= 5)")
        print(f"{rows:>3d} row{'s' if rows > 1 else ' '}: kit ONNX server = " + "; ".join(parts))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
