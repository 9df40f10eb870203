"""``mlops-kit server check | init``: the team's server, over SSH."""

from __future__ import annotations

import json
import sys

import click

_identity = click.option("-i", "--identity-file", type=click.Path(dir_okay=False), default=None,
                         help="private key (default: ssh's own defaults)")
_known_hosts = click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
                            help="known_hosts file holding the server's host key (default: ~/.ssh/known_hosts)")


@click.group()
def server():
    """The team's server: check it, set it up for `git push` deploys."""


@server.command("check")
@click.argument("host", metavar="ssh://USER@HOST[:PORT]")
@_identity
@_known_hosts
@click.option("--min-free-gb", type=float, default=None, help="free disk the images need (default 2)")
@click.option("--json", "as_json", is_flag=True, help='print {"checks": [{"name", "ok", "detail", "fix"}, ...]}')
def check(host, identity_file, known_hosts, min_free_gb, as_json):
    """Check SSH (key auth, verified host key), MicroK8s, its group, containerd, disk and Python on
    the server; say how to fix each failure. Exit 0 only when all pass."""
    from .._terminal import printable
    from ..server import SSH
    from ..server.check import MIN_FREE_GB, run_checks

    ssh = SSH(host, identity_file=identity_file, known_hosts=known_hosts)
    checks = run_checks(ssh, min_free_gb=MIN_FREE_GB if min_free_gb is None else min_free_gb,
                        log=None if as_json else lambda line: click.echo(printable(line)))
    if as_json:
        click.echo(json.dumps({"host": ssh.target.url, "checks": checks}, indent=2))
    sys.exit(0 if all(c["ok"] for c in checks) else 1)   # SystemExit: click would swallow Exit


@server.command("init")
@click.argument("host", metavar="ssh://USER@HOST[:PORT]")
@_identity
@_known_hosts
@click.option("-p", "--params", "params_file", default="parameters/server.yaml", show_default=True,
              help="the parameter file (in the repository) each push runs with")
@click.option("--branch", default="main", show_default=True, help="the branch whose pushes deploy")
@click.option("--remote", default="server", show_default=True, help="the name of the git remote to add")
def init(host, identity_file, known_hosts, params_file, branch, remote):
    """Create a bare repository with a hook on the server and add the git remote: then
    `git push server main` runs the pipeline there."""
    from pathlib import Path

    from ..server import SSH
    from ..server.push import init as init_server

    ssh = SSH(host, identity_file=identity_file, known_hosts=known_hosts)
    result = init_server(ssh, repo_dir=Path.cwd(), params_file=params_file, branch=branch, remote=remote,
                         log=click.echo)
    import subprocess

    for key, value in (("host", ssh.target.url), ("identityFile", ssh.identity_file or ""),
                       ("knownHosts", ssh.known_hosts), ("project", result["project"])):
        subprocess.run(["git", "config", f"mlops-kit.{key}", value], check=True)


@server.command("receive", hidden=True)
@click.option("--project", required=True)
@click.option("--params", "params_file", default="parameters/server.yaml")
@click.option("--branch", default="main")
def receive(project, params_file, branch):
    """(On the server, from the git hook.) Run the pipeline for a push; exit 1 refuses it."""
    from ..server.push import receive as receive_push

    sys.exit(receive_push(sys.stdin.read().splitlines(), project=project, params_file=params_file, branch=branch))
