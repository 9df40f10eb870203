"""``mlops-kit serve RUN_ID|MODEL_DIR``: the model server on this machine."""

from __future__ import annotations

from pathlib import Path

import click


def resolve_model_dir(target: str) -> Path:
    """The model folder ``target`` names.

    A run id (or ``champion``) names ``<runs dir>/<RUN_ID>/artifacts``. A path inside the
    runs folder names the run it is in: its folder or its ``artifacts/`` (checked like a run
    id: no symbolic link out of the runs folder). Any other path is a model folder served as
    it is (a folder with model.skops and model_card.json, e.g. an unpacked image context).
    """
    import os

    from .. import _paths
    from ..errors import ArtifactError, RunNotFound
    from ..ledger import CHAMPION, RUN_ID_PATTERN, run_path

    runs = _paths.runs_dir()
    bare_name = RUN_ID_PATTERN.fullmatch(target) is not None
    in_runs = bare_name and ((runs / target).exists() or (runs / target).is_symlink())
    if target == CHAMPION or in_runs or (bare_name and not Path(target).is_dir()):
        run_dir = run_path(target, champion=True, scratch=True)
        if not run_dir.is_dir():
            raise RunNotFound(target, runs)
        return run_dir / _paths.ARTIFACTS_SUBDIR
    lexical = Path(os.path.abspath(Path(target).expanduser()))
    inside = _relative_to_runs(lexical, runs) or _relative_to_runs(lexical.resolve(), runs)
    if inside is not None:
        if not inside.parts:
            raise ArtifactError(f"{target} is the runs folder, not a model folder.", path=lexical,
                                hint="give a run id (`mlops-kit runs list`) or a run's folder.")
        run_dir = run_path(inside.parts[0], scratch=True)
        if not run_dir.is_dir():
            raise RunNotFound(inside.parts[0], runs)
        if inside.parts[1:] not in ((), (_paths.ARTIFACTS_SUBDIR,)):
            raise ArtifactError(f"{target} is inside run {inside.parts[0]}: expected the run's folder or its "
                                f"{_paths.ARTIFACTS_SUBDIR}/ folder; found {'/'.join(inside.parts[1:])}.",
                                path=lexical)
        return run_dir / _paths.ARTIFACTS_SUBDIR
    if not lexical.is_dir():
        raise ArtifactError(f"The model folder must exist. Got {target} instead.", path=lexical,
                            hint="give a run id (`mlops-kit runs list`) or a folder with model.skops.")
    if (lexical / _paths.ARTIFACTS_SUBDIR).is_dir():     # a run folder kept elsewhere: its artifacts/
        return (lexical / _paths.ARTIFACTS_SUBDIR).resolve()
    return lexical.resolve()


def _relative_to_runs(path: Path, runs: Path) -> Path | None:
    """``path`` relative to the runs folder (as given or resolved), or None when outside."""
    import os

    for root in {Path(os.path.abspath(runs)), runs.resolve()}:
        try:
            return path.relative_to(root)
        except ValueError:
            continue
    return None


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
@click.option("--log-requests", "log_requests", metavar="DIR", type=click.Path(file_okay=False), default=None,
              help="Write a sample of the requests (features, answer, request id) to DIR, for 06_monitor "
                   "[env MLOPS_KIT_LOG_REQUESTS].")
@click.option("--log-sample", "log_sample", metavar="F", type=click.FloatRange(0, 1), default=None,
              help="Share of requests written to the log [env MLOPS_KIT_LOG_SAMPLE; default 1 with --log-requests].")
@click.option("--admin-port", "admin_port", type=click.IntRange(1, 65535), default=None,
              help="Serve the request log's files on this port (GET /requests), never on --port; for "
                   "`mlops-kit monitor`, only to requests with the token of env MLOPS_KIT_ADMIN_TOKEN in "
                   "x-mlops-kit-admin-token (none set: to no one) [env MLOPS_KIT_ADMIN_PORT; only with "
                   "--log-requests].")
def serve(target, host, port, workers, max_rows, max_body_bytes, unknown_categories, access_log, log_requests,
          log_sample, admin_port):
    """Serve the model of run RUN_ID (or of the folder MODEL_DIR) over HTTP.

    The model's sha256 and types are checked and a warm-up prediction of its examples must
    match before the port opens. /docs describes the endpoints; Ctrl-C stops.
    """
    from ..serving import ServeSettings, serve as run_server
    from ..serving.__main__ import log_sample as sample_asked

    model_dir = resolve_model_dir(target)
    settings = ServeSettings.from_env(max_rows=max_rows, max_body_bytes=max_body_bytes,
                                      unknown_categories=unknown_categories, log_requests=log_requests,
                                      log_sample=sample_asked(log_requests, log_sample), admin_port=admin_port)
    click.echo(f"Loading the model in {model_dir}; then serving on http://{host}:{port} (docs: /docs)", err=True)
    run_server(model_dir, host=host, port=port, workers=workers, settings=settings, access_log=access_log)
