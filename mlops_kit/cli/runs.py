"""``mlops-kit runs``: the ledger of runs."""

from __future__ import annotations

import click

from ._output import print_json, print_table


@click.group()
def runs():
    """List, show, compare and manage runs."""


def _headline(record: dict) -> str:
    verdict = record.get("verdict")
    if record.get("kind") == "monitor" and isinstance(verdict, dict):  # a deployed model watched
        return f"{verdict.get('status')} (run {verdict.get('model_run')})"
    metrics = record.get("metrics") or {}
    for name in ("accuracy", "rmse", "r2"):
        if name in metrics:
            return f"{name} {metrics[name]:.4f}"
    return ""


def _stages_cell(record: dict) -> str:
    marks = {"succeeded": "ok", "failed": "FAILED", "reused": "reused", "cached": "cached",
             "running": "running", "interrupted": "interrupted", "pending": "-"}
    return " ".join(f"{name}:{marks.get(info.get('status'), info.get('status'))}"
                    for name, info in record.get("stages", {}).items())


@runs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="Newest N runs (0: all).")
@click.option("--server", "on_server", is_flag=True, help="The runs of `git push` deploys, on the team's server "
              "(over SSH; the server `mlops-kit server init` set up).")
def list_(as_json, limit, on_server):
    """The runs, newest first."""
    from ..ledger import list_runs

    if on_server:
        from ..server.ledger import remote_runs

        click.echo(remote_runs(["list", "-n", str(limit), *(["--json"] if as_json else [])]), nl=False)
        return

    records = list_runs()
    if limit:
        records = records[:limit]
    if as_json:
        print_json(records)
        return
    if not records:
        click.echo("No runs yet: `mlops-kit run` makes one.")
        return
    rows = [(r["id"] + (" *" if r.get("champion") else ""), r.get("created", ""), r.get("status", ""),
             (r.get("params") or {}).get("train", {}).get("model", ""), _headline(r), _stages_cell(r))
            for r in records]
    print_table(["run (* champion)", "created", "status", "model", "headline", "stages"], rows)


@runs.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.option("--server", "on_server", is_flag=True, help="A run of a `git push` deploy, on the team's server.")
def show(run_id, as_json, on_server):
    """One run: its status, stages, metrics, parameters and files."""
    from .. import _paths
    from ..ledger import read_run

    if on_server:
        from ..server.ledger import remote_runs

        click.echo(remote_runs(["show", run_id, *(["--json"] if as_json else [])]), nl=False)
        return

    record = read_run(run_id)
    if as_json:
        print_json(record)
        return
    folder = _paths.runs_dir() / record["id"]
    click.echo(f"Run {record['id']}: {record['status']} (created {record.get('created')}, "
               f"finished {record.get('finished', '-')})")
    if record.get("git"):
        click.echo(f"git {record['git']['commit'][:12]}{' (dirty)' if record['git']['dirty'] else ''}")
    stage_rows = []
    for name, info in record.get("stages", {}).items():
        error = info.get("error") or {}
        detail = (f"cell {error.get('cell_index')}: {error.get('exception')}: {error.get('message')}"
                  if error else info.get("source_run", "") and f"from {info['source_run']}")
        stage_rows.append((name, info.get("status"), info.get("seconds", ""), info.get("notebook", ""), detail))
    print_table(["stage", "status", "seconds", "notebook", "detail"], stage_rows, title="Stages")
    if record.get("overhead"):
        click.echo(_overhead_line(record["overhead"]))
    metrics = record.get("metrics") or {}
    if metrics:
        print_table(["metric", "value"], [(k, f"{v:.4f}" if isinstance(v, float) else v)
                                          for k, v in metrics.items()], title="Metrics")
    params = record.get("params") or {}
    rows = []
    for section, value in params.items():
        if isinstance(value, dict):
            rows.extend((f"{section}.{k}", v) for k, v in value.items())
        else:
            rows.append((section, value))
    print_table(["parameter", "value"], rows, title="Parameters")
    if record.get("error"):
        error = record["error"]
        click.secho(f"Failed in stage {error.get('stage')}, cell {error.get('cell_index')}: "
                    f"{error.get('exception')}: {error.get('message')}", fg="red")
    click.echo(f"Folder: {folder}")


@runs.command()
@click.argument("run_id")
@click.option("--server", "on_server", is_flag=True,
              help="From the team's server (the one `mlops-kit server init` set up); required.")
@click.option("--force", is_flag=True, help="Replace a local run of the same id.")
@click.option("--max-mb", type=click.IntRange(min=1), default=None,
              help="The most the run may weigh, in MiB (default 2048: models included).")
def fetch(run_id, on_server, force, max_mb):
    """Copy a run of the team's server here: then runs show/compare, its notebooks and reports work."""
    from ..server.fetch import MAX_FETCH_BYTES, fetch_run

    if not on_server:
        raise click.UsageError("runs fetch copies a run of the team's server: add --server.")
    folder = fetch_run(run_id, force=force, max_bytes=max_mb << 20 if max_mb else MAX_FETCH_BYTES)
    click.echo(f"Fetched run {run_id} into {folder}")


def _overhead_line(overhead: dict) -> str:
    """``Outside the stages: 2.9 s of 6.3 s (kernel start 1.1, ...)``, largest phase first."""
    phases = sorted(overhead.get("phases", {}).items(), key=lambda item: -item[1])
    return (f"Outside the stages: {overhead['seconds']:.2f} s of {overhead['wall']:.2f} s ("
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases) + ")")


@runs.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default="runs-compare.png",
              show_default=True, help="Where to save the metrics plot (PNG).")
def compare(run_ids, as_json, plot_path):
    """Parameters that differ and metrics side by side, for two or more runs."""
    from ..compare import compare_runs, plot_comparison

    result = compare_runs(list(run_ids))
    if as_json:
        print_json(result)
        return
    header = ["", *[r["id"] + (" *" if r["champion"] else "") for r in result["runs"]]]
    rows = [(f"{k}", *("" if v is None else v for v in values)) for k, values in result["params"].items()]
    if rows:
        print_table(header, rows, title="Parameters that differ")
    else:
        click.echo("The runs have the same parameters.")
    rows = [(k, *("" if v is None else f"{v:.4f}" for v in values)) for k, values in result["metrics"].items()]
    if rows:
        print_table(header, rows, title="Metrics")
        plot_comparison(result, plot_path)
        click.echo(f"Plot: {plot_path}")


@runs.command()
@click.argument("run_id")
@click.option("--why", default="", help="Why this run is promoted (kept in the record).")
def promote(run_id, why):
    """Make a run the champion: evaluation compares with it; build and deploy take it by default."""
    from ..ledger import promote as promote_run

    entry = promote_run(run_id, why=why)
    previous = entry["history"][-1]["run"] if entry["history"] else "none"
    click.echo(f"Run {run_id} is the champion (promoted by {entry['who']} at {entry['when']}; "
               f"previous: {previous}).")


@runs.command()
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Remove the champion too.")
def rm(run_id, force):
    """Remove a run's folder (never one still running)."""
    from ..ledger import remove_run

    remove_run(run_id, force=force)
    click.echo(f"Removed run {run_id}.")


@runs.command()
@click.option("--keep", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the newest runs to keep (the champion is always kept).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def gc(keep, dry_run):
    """Remove old runs: keeps the newest N, the champion, and any run still going."""
    from ..ledger import collect_garbage

    removed = collect_garbage(keep, dry_run=dry_run)
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {len(removed)} run(s)" + (": " + ", ".join(removed) if removed else "."))


@runs.command()
@click.argument("run_id", required=False)
@click.option("--markdown", "fmt", flag_value="markdown", default=True,
              help="Markdown tables (the default): for $GITHUB_STEP_SUMMARY or a job log.")
@click.option("--dotenv", "fmt", flag_value="dotenv",
              help="MLOPS_RUN_ID=..., MLOPS_GATE=..., MLOPS_METRIC_<NAME>=... lines: for $GITHUB_OUTPUT "
                   "or GitLab's dotenv report.")
@click.option("--json", "fmt", flag_value="json", help="The summary as JSON.")
def summary(run_id, fmt):
    """A run (default: the newest) in brief: id, status, stages, metrics and the quality gate."""
    from ..summary import render_dotenv, render_markdown, summarize

    result = summarize(run_id)
    if fmt == "json":
        print_json(result)
    else:
        click.echo(render_dotenv(result) if fmt == "dotenv" else render_markdown(result), nl=False)
