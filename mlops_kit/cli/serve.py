"""``mlops-kit serve RUN_ID|MODEL_DIR``: the model server on this machine."""

from __future__ import annotations

from pathlib import Path

import click


def resolve_model_dir(target: str) -> Path:
    """A model folder given directly, or a run id: ``<runs dir>/<RUN_ID>/artifacts``."""
    from .. import _paths
    from ..errors import ArtifactError, RunNotFound

    direct = Path(target).expanduser()
    if direct.is_dir():
        inside = direct / _paths.ARTIFACTS_SUBDIR       # a run folder: its artifacts/
        return (inside if inside.is_dir() else direct).resolve()
    if "/" in target or "\\" in target or target.startswith("."):
        raise ArtifactError(f"The model folder must exist. Got {target} instead.", path=direct,
                            hint="give a run id (`mlops-kit runs list`) or a folder with model.skops.")
    runs = _paths.runs_dir()
    run_folder = runs / target
    if not run_folder.is_dir():
        raise RunNotFound(target, runs)
    return run_folder / _paths.ARTIFACTS_SUBDIR


@click.command()
@click.argument("target", metavar="RUN_ID|MODEL_DIR")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, envvar="PORT",
              help="Port to listen on (env PORT).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes; each loads the model.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None,
              help="Rows per request at most [env MLOPS_KIT_MAX_ROWS; default 10000].")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=None,
              help="Request body size limit [env MLOPS_KIT_MAX_BODY_BYTES; default 10 MiB].")
@click.option("--unknown-categories", type=click.Choice(["tolerate", "reject"]), default=None,
              help="Categories unseen in training [env MLOPS_KIT_UNKNOWN_CATEGORIES; default tolerate].")
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve(target, host, port, workers, max_rows, max_body_bytes, unknown_categories, access_log):
    """Serve the model of run RUN_ID (or of the folder MODEL_DIR) over HTTP.

    The model's sha256 and types are checked and a warm-up prediction of its examples must
    match before the port opens. /docs describes the endpoints; Ctrl-C stops.
    """
    from ..serving import ServeSettings, serve as run_server

    model_dir = resolve_model_dir(target)
    settings = ServeSettings.from_env(max_rows=max_rows, max_body_bytes=max_body_bytes,
                                      unknown_categories=unknown_categories)
    click.echo(f"Loading the model in {model_dir}; then serving on http://{host}:{port} (docs: /docs)", err=True)
    run_server(model_dir, host=host, port=port, workers=workers, settings=settings, access_log=access_log)
