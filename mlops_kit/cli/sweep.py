"""``mlops-kit sweep``: a grid of settings, one run per setting; ``sweep show``: the leaderboard."""

from __future__ import annotations

import sys

import click

from ._output import print_json, print_table


@click.group(invoke_without_command=True)
@click.option("-p", "--params", "params_file", type=click.Path(dir_okay=False),
              help="Parameter file (default: parameters/default.yaml); its `sweep:` section is the grid.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one parameter of every trial, typed by the schema. Repeatable.")
@click.option("--grid", "grid", multiple=True, metavar="SECTION.KEY=[V1, V2, ...]",
              help="Values to try for one parameter of the train or evaluate stage (beside or instead of the "
                   "file's sweep: section). Repeatable: every combination is a trial.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Trials at a time (default: the cores; with execution.mode "
              "kubernetes, the Indexed Job's parallelism, default every trial).")
@click.option("--resume", metavar="SWEEP_ID", help="Run again only the trials of this sweep that did not succeed.")
@click.option("--no-report", is_flag=True, help="Skip the report notebook (sweep_report.ipynb).")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@click.option("--dry-run", is_flag=True, help="With execution.mode kubernetes: print the data stage's Job and the "
              "trials' Indexed Job (YAML, one document each); create nothing.")
@click.pass_context
def sweep(ctx, params_file, overrides, grid, jobs, resume, no_report, as_json, dry_run):
    """Try every combination of the grid: the data stage once, then train and evaluate per
    setting, each a run of the ledger. A failed trial does not stop the others; the exit
    code is 1 only when every trial failed. With execution.mode kubernetes the trials are
    one Indexed Job (--jobs: its parallelism; default every trial)."""
    if ctx.invoked_subcommand is not None:
        return
    from .. import runner, sweep as sweeps

    runner.skip_iri_grammar()
    if resume and (params_file or overrides or grid or dry_run):
        raise click.UsageError("--resume runs a sweep again with its own parameters and grid: "
                               "it takes no -p, --set, --grid or --dry-run.")
    if dry_run:
        import yaml

        from ..execution.sweep_job import planned_sweep_jobs
        from ..params import load_params

        loaded = load_params(params_file, overrides, grid=grid)
        documents = planned_sweep_jobs(loaded, len(sweeps.checked_settings(loaded)), jobs)
        click.echo(yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True), nl=False)
        return
    import signal

    from ..execution.local import discard_prestarted, prestart

    prestart()  # the kernels' parent imports the libraries while the parameters are checked
    # SIGTERM ends the sweep like Ctrl-C: no trial starts; running ones stop before their next stage
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    printer = _Progress()
    try:
        if resume:
            record = sweeps.resume_sweep(resume, jobs=jobs, on_event=printer.run_event, on_trial=printer.trial,
                                         report=not no_report)
        else:
            from ..params import load_params

            loaded = load_params(params_file, overrides, grid=grid)
            record = sweeps.run_sweep(loaded, jobs=jobs, on_event=printer.run_event, on_trial=printer.trial,
                                      report=not no_report)
    finally:
        discard_prestarted()
    board = sweeps.leaderboard(record["id"])
    if as_json:
        print_json(board)
    else:
        _print_board(board)
    if record["status"] == "failed":
        sys.exit(1)


class _Progress:
    """A line per trial as it starts and ends (stderr: --json stays clean)."""

    def run_event(self, event) -> None:
        if event.kind == "run_started":
            self._write(f"data stage: run {event.run_id}")
        elif event.kind in ("stage_cached", "stage_failed"):
            self._write(f"  {event.stage:<9} {event.message}")
        elif event.kind == "stage_finished":
            self._write(f"  {event.stage:<9} succeeded in {event.data['seconds']:.1f} s")

    def trial(self, trial: dict) -> None:
        setting = ", ".join(f"{k}={v!r}" for k, v in trial["setting"].items())
        if trial["status"] == "running":
            self._write(f"trial {trial['index']} ({setting}) running ...")
        elif trial["status"] == "succeeded":
            self._write(f"trial {trial['index']} ({setting}) succeeded: run {trial['run']}")
        else:
            error = " ".join(line.strip(" -") for line in (trial["error"] or "").splitlines())
            self._write(f"trial {trial['index']} ({setting}) {trial['status'].upper()}: {error}")

    @staticmethod
    def _write(line: str) -> None:
        from .._terminal import printable

        sys.stderr.write(printable(line) + "\n")
        sys.stderr.flush()


@sweep.command()
@click.argument("sweep_id", required=False)
@click.option("--json", "as_json", is_flag=True,
              help='Print {"trials": [{"run", "status", "params", "metrics"}, ...]} (and the sweep\'s id, metric).')
def show(sweep_id, as_json):
    """A sweep's leaderboard (default: the newest sweep), best first by the gate's metric."""
    from ..sweep import leaderboard

    board = leaderboard(sweep_id)
    if as_json:
        print_json(board)
    else:
        _print_board(board)


def _print_board(board: dict) -> None:
    from .. import _paths
    from ..sweep import best_trial

    metric = board["metric"]
    keys = list(board["grid"])
    rows = []
    for trial in board["trials"]:
        value = trial["metrics"].get(metric)
        rows.append((trial["index"], trial["run"] or "-", trial["status"],
                     *(trial["params"].get(k) for k in keys),
                     "" if value is None else f"{value:.4f}",
                     "" if not trial["metrics"] else ("passed" if trial["metrics"].get("gate_passed") else "FAILED")))
    order = "higher" if board["higher_is_better"] else "lower"
    print_table(["trial", "run", "status", *keys, metric or "metric", "gate"], rows,
                title=f"Sweep {board['id']} ({board['status']}): {metric}, {order} is better")
    failed = [t for t in board["trials"] if t["status"] != "succeeded"]
    for trial in sorted(failed, key=lambda t: t["index"]):
        setting = ", ".join(f"{k}={v!r}" for k, v in trial["params"].items())
        click.secho(f"Trial {trial['index']} ({setting}) {trial['status']}: {(trial['error'] or '').strip()}",
                    fg="red")
    if failed:
        click.echo(f"Run them again: mlops-kit sweep --resume {board['id']}")
    best = best_trial(board)
    if best:
        click.echo(f"Best: run {best['run']}. Promote it: mlops-kit runs promote {best['run']}")
    if board.get("report"):
        click.echo(f"Report: {_paths.sweeps_dir() / board['id'] / board['report']}")
