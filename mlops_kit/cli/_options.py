"""Options shared by the commands that act on a finished run (build, deploy, status ...):
the run's own recorded parameters, or ``-p FILE``, with ``--set`` overrides on top."""

from __future__ import annotations

from pathlib import Path

import click

params_option = click.option("-p", "--params", "params_file", type=click.Path(dir_okay=False),
                             help="parameter file (default: the run's own parameters, else "
                                  "parameters/default.yaml)")
set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="override a parameter (repeatable), typed by the schema")


def load_for_run(params_file: str | None, overrides: tuple[str, ...], run_dir: Path | None):
    """``-p FILE`` (all of it), else the run's recorded parameters, else the default; then
    the overrides. Raises ParameterError naming the file or the ``--set``."""
    from ..params import load_params, load_run_params

    if params_file is None and run_dir is not None:
        return load_run_params(run_dir, tuple(overrides)).params
    return load_params(params_file, tuple(overrides)).params
