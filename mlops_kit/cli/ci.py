"""``mlops-kit ci``: CI/CD templates for GitHub Actions and GitLab CI."""

from __future__ import annotations

import click


@click.group()
def ci():
    """CI/CD: a workflow that runs the pipeline on push and deploys main to the team's server."""


@ci.command()
@click.argument("kind", type=click.Choice(["github", "gitlab"]))
@click.option("-p", "--params", "params_file", default="parameters/default.yaml", show_default=True,
              help="Parameter file the CI runs, relative to the project folder.")
@click.option("--python", "python_version", default="3.11", show_default=True, help="Python version in CI.")
@click.option("--project", help="Name of the server's repository ~/mlops-kit/<project>.git "
              "(default: the project folder's name).")
@click.option("--force", is_flag=True, help="Overwrite an existing CI file.")
def init(kind, params_file, python_version, project, force):
    """Write .github/workflows/mlops.yml (github) or .gitlab-ci.yml (gitlab) into the project."""
    from .. import _paths
    from ..ci import init_ci

    folder = _paths.project_dir()
    path = init_ci(kind, folder, params_file=params_file, python_version=python_version, project=project,
                   force=force)
    click.echo(f"Wrote {path}.")
    where = ("Settings > Secrets and variables > Actions: secret MLOPS_SSH_KEY, variables MLOPS_SERVER, "
             "MLOPS_KNOWN_HOSTS" if kind == "github" else
             "Settings > CI/CD > Variables: MLOPS_SSH_KEY, MLOPS_SERVER, MLOPS_KNOWN_HOSTS")
    click.echo(f"To deploy main to your server, set {where} (see the comment at the top of the file).")
