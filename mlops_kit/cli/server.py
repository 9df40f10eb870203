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
    from ..server import SSH
    from ..server.check import MIN_FREE_GB, run_checks

    ssh = SSH(host, identity_file=identity_file, known_hosts=known_hosts)
    checks = run_checks(ssh, min_free_gb=MIN_FREE_GB if min_free_gb is None else min_free_gb,
                        log=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps({"host": ssh.target.url, "checks": checks}, indent=2))
    sys.exit(0 if all(c["ok"] for c in checks) else 1)   # SystemExit: click would swallow Exit
