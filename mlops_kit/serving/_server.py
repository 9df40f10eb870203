"""Running the app under uvicorn: one process, or N workers that each load the model."""

from __future__ import annotations

import os
from pathlib import Path

from ._settings import ServeSettings

#: seconds SIGTERM waits for requests in flight before closing their connections
GRACEFUL_SHUTDOWN_SECONDS = 5


def serve(model_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          settings: ServeSettings | None = None, log_level: str = "info", access_log: bool = False) -> None:
    """Serve ``model_dir`` until SIGTERM/SIGINT (then drain: stop accepting, finish requests
    in flight, at most GRACEFUL_SHUTDOWN_SECONDS). The model is loaded and warmed up before
    the port opens, so a bad artifact fails here with ArtifactError and nothing listens.

    With ``workers > 1`` every worker loads the model and keeps its own metrics (a scrape of
    ``/metrics`` sees the worker that answered); in Kubernetes prefer 1 worker per pod and
    more replicas.
    """
    import uvicorn

    from .app import MODEL_DIR_ENV, create_app

    settings = settings or ServeSettings.from_env()
    options = uvicorn_options(settings, host=host, port=port, log_level=log_level, access_log=access_log)
    if settings.admin_port is not None and settings.admin_port == port:
        from ..errors import ParameterError, ParameterProblem

        raise ParameterError([ParameterProblem("serve settings", "admin_port", f"a port other than the serving "
                                               f"port {port} (the log is never on the public port)", repr(port))])
    if workers > 1 and settings.admin_port is not None:
        from ..errors import ParameterError, ParameterProblem

        raise ParameterError([ParameterProblem("serve settings", "admin_port", "none with more than 1 worker "
                                               "(each worker would listen on it): 1 worker per pod",
                                               repr(settings.admin_port))])
    app = create_app(model_dir, settings)  # fails before listening; workers repeat it
    app.service.admin_host = host
    if workers <= 1:
        uvicorn.run(app, **options)
        return
    del app
    os.environ.update(settings.to_env())
    os.environ[MODEL_DIR_ENV] = str(Path(model_dir).resolve())
    uvicorn.run("mlops_kit.serving.app:app_from_env", factory=True, workers=workers, **options)


def uvicorn_options(settings: ServeSettings, *, host: str, port: int, log_level: str = "info",
                    access_log: bool = False) -> dict:
    """uvicorn's settings for the kit's server (also benchmarks/_stub_model_server.py's)."""
    from ._protocol import ServingHttpProtocol

    return dict(host=host, port=port, log_level=log_level, access_log=access_log, server_header=False,
                date_header=True, proxy_headers=False, lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, loop=settings.loop, http=ServingHttpProtocol)
