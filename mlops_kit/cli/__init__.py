"""The ``mlops-kit`` command. Each sub-command lives in its own module and is imported only
when it is called, so ``mlops-kit --help`` and a cached run start fast."""

from __future__ import annotations

import importlib
import sys

import click

#: sub-command name -> "module:attribute" (modules relative to mlops_kit.cli)
COMMANDS = {
    "run": "run:run",
    "runs": "runs:runs",
    "params": "run:params",
    "serve": "serve:serve",
    "build": "build:build",
    "base": "build:base",
    "deploy": "deploy:deploy",
    "status": "deploy:status",
    "undeploy": "deploy:undeploy",
    "rollback": "deploy:rollback",
    "ci": "ci:ci",
    "server": "server:server",
    "monitor": "monitor:monitor",
    "sweep": "sweep:sweep",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(f"mlops_kit.cli.{module}"), attr)
        except ModuleNotFoundError as exc:
            if exc.name == f"mlops_kit.cli.{module}":
                return None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlops-kit")
def main():
    """Notebook-driven MLOps: data, train, evaluate, package, deploy - one notebook per stage."""


#: options of ``run`` that execute no stage here: no kernels' parent started for them
_NO_LOCAL_STAGES = {"-h", "--help", "--explain", "--dry-run"}


def run_cli() -> None:
    """Entry point: user mistakes (MlopsKitError) print their message, never a traceback."""
    from .._terminal import printable
    from ..errors import MlopsKitError

    try:
        if sys.argv[1:2] == ["run"] and not _NO_LOCAL_STAGES & set(sys.argv[2:]):
            # the kernels' parent first: its imports (seconds) go on while this process imports
            # the CLI and the runner, loads the parameters and plans; stopped if no stage runs
            from ..execution.local import prestart

            prestart()
        main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except MlopsKitError as exc:
        click.secho(f"Error: {printable(str(exc))}", fg="red", err=True)   # may quote a server's output
        sys.exit(2 if type(exc).__name__ == "ParameterError" else 1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
