"""``python -m mlops_kit.serving --model-dir DIR [--host H] [--port P]``: the image's entry point.

Flags win over the environment: ``MLOPS_KIT_MODEL_DIR``, ``PORT``, ``MLOPS_KIT_MAX_ROWS``,
``MLOPS_KIT_MAX_BODY_BYTES``, ``MLOPS_KIT_UNKNOWN_CATEGORIES``, ``MLOPS_KIT_MODEL_NAME``, ``MLOPS_KIT_RUNTIME``,
``MLOPS_KIT_LOOP``; environment only: ``MLOPS_KIT_MAX_CONNECTIONS``, ``MLOPS_KIT_HEADER_TIMEOUT``,
``MLOPS_KIT_MAX_MODEL_MEMORY`` (docs/security.md, "The ONNX path and the HTTP limits").
``--admin-port`` (``MLOPS_KIT_ADMIN_PORT``) serves the request log's files on a second port, only with
``--log-requests``, only to requests with the token of ``MLOPS_KIT_ADMIN_TOKEN`` (environment only)
(docs/monitoring.md, "The request log on MicroK8s").
A bad artifact or setting prints one line and exits 1 (2 for settings), no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import MlopsKitError, ParameterError
from ._settings import LOOPS, RUNTIMES, UNKNOWN_CATEGORY_POLICIES, ServeSettings


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"the port must be a number from 1 to 65535. Got {text!r} instead.")
    return int(text)


def parser() -> argparse.ArgumentParser:
    from .app import MODEL_DIR_ENV

    p = argparse.ArgumentParser(prog="python -m mlops_kit.serving", description="Serve a mlops-kit model over HTTP.")
    p.add_argument("--model-dir", default=os.environ.get(MODEL_DIR_ENV),
                   help=f"the model folder (a run's artifacts/); env {MODEL_DIR_ENV}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="port (default: env PORT, else 8080)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--max-rows", type=int, default=None, help="rows per request at most (env MLOPS_KIT_MAX_ROWS)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="request body size limit (env MLOPS_KIT_MAX_BODY_BYTES)")
    p.add_argument("--unknown-categories", choices=UNKNOWN_CATEGORY_POLICIES, default=None,
                   help="categories unseen in training: tolerate or reject (env MLOPS_KIT_UNKNOWN_CATEGORIES)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="auto (ONNX when verified, else skops), onnx or skops (env MLOPS_KIT_RUNTIME)")
    p.add_argument("--loop", choices=LOOPS, default=None,
                   help="event loop: asyncio (default; the steadier tail) or uvloop (more one-row requests/s) "
                        "(env MLOPS_KIT_LOOP)")
    p.add_argument("--model-name", default=None, help="name in the v2 paths (default: the card's model)")
    p.add_argument("--log-requests", metavar="DIR", default=None,
                   help="write a sample of the requests to DIR (env MLOPS_KIT_LOG_REQUESTS)")
    p.add_argument("--log-sample", metavar="F", type=float, default=None,
                   help="share of requests written, 0 to 1 (env MLOPS_KIT_LOG_SAMPLE; default 1 with --log-requests)")
    p.add_argument("--admin-port", type=_port, default=None,
                   help="serve the request log's files on this port (GET /requests), never on --port "
                        "(env MLOPS_KIT_ADMIN_PORT; only with --log-requests), only to requests with the token "
                        "of env MLOPS_KIT_ADMIN_TOKEN in x-mlops-kit-admin-token (none set: to no one)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not args.model_dir:
            raise ParameterError([_problem("--model-dir", "the model folder (or MLOPS_KIT_MODEL_DIR)", "nothing")])
        port = args.port
        if port is None:
            raw = os.environ.get("PORT", "8080")
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ParameterError([_problem("PORT", "a port from 1 to 65535", repr(raw), "environment")])
            port = int(raw)
        if args.workers < 1:
            raise ParameterError([_problem("--workers", "at least 1", str(args.workers))])
        settings = ServeSettings.from_env(max_rows=args.max_rows, max_body_bytes=args.max_body_bytes,
                                          unknown_categories=args.unknown_categories, model_name=args.model_name,
                                          runtime=args.runtime, loop=args.loop, log_requests=args.log_requests,
                                          log_sample=log_sample(args.log_requests, args.log_sample),
                                          admin_port=args.admin_port)
        from ._server import serve
        serve(args.model_dir, host=args.host, port=port, workers=args.workers, settings=settings,
              log_level=args.log_level, access_log=args.access_log)
    except MlopsKitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ParameterError) else 1
    except KeyboardInterrupt:
        return 130
    return 0


def log_sample(folder: str | None, sample: float | None) -> float | None:
    """The share of requests logged a command line asks for: ``--log-sample``, else every
    request when ``--log-requests`` names a folder (else the environment's)."""
    if sample is None and folder and not os.environ.get("MLOPS_KIT_LOG_SAMPLE"):
        return 1.0
    return sample


def _problem(key: str, expected: str, found: str, file: str = "command line"):
    from ..errors import ParameterProblem
    return ParameterProblem(file, key, expected, found)


if __name__ == "__main__":
    sys.exit(main())
