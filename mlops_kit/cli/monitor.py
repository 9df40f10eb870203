"""``mlops-kit monitor``: 06_monitor from a terminal (a run of kind ``monitor``)."""

from __future__ import annotations

import sys

import click

from ._options import set_option


@click.command()
@click.argument("run_id", required=False)
@click.option("--log", "log_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="the request log's folder (default: the local deploy's, runs/.requests/RUN_ID/; on MicroK8s "
                   "collected from every pod through the Kubernetes API)")
@click.option("--labels", metavar="FILE", type=click.Path(dir_okay=False),
              help="late labels: a CSV or parquet file of request_id (+ row) and the target column")
@click.option("--export-labelled", metavar="PATH", type=click.Path(dir_okay=False),
              help="write the labelled live rows here (.csv or .parquet): retrain with "
                   "`mlops-kit run -p FILE --set data.source=PATH`")
@click.option("--alpha", type=float, default=None, help="false alarms on unchanged traffic, over all features "
              "together (default 0.05)")
@set_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON (window, features, prediction, "
              "quality, performance, verdict)")
def monitor(run_id, log_dir, labels, export_labelled, alpha, overrides, as_json):
    """Judge the live traffic of the model of RUN_ID (default: the one deployed locally, else the
    champion) against its training split: drift, data quality and, with --labels, live metrics
    against the quality gate. The report is a run of kind monitor (runs/<id>/).

    Exit codes: 0 healthy, 3 drift, 4 data quality, 5 performance below the gate (1: an
    error, 2: a parameter error).
    """
    from .. import runner
    from ..monitor import watch

    runner.skip_iri_grammar()

    def progress(event) -> None:  # on stderr: --json keeps stdout to the report
        if event.kind == runner.EventKind.RUN_STARTED:
            click.echo(f"Monitor run {event.run_id}: 06_monitor reads the request log ...", err=True)

    record, result = watch(run_id, log_dir=log_dir, labels=labels, export_labelled=export_labelled, alpha=alpha,
                           overrides=overrides, on_event=progress, log=lambda line: click.echo(line, err=True))
    if as_json:
        from ._output import print_json

        print_json(result.summary())
    else:
        _print_report(record, result)
    sys.exit(result.verdict.exit_code)


def _print_report(record: dict, result) -> None:
    from ._output import print_table

    window, verdict = result.window, result.verdict
    click.echo(f"Monitor run {record['id']}: model run {window.model_run}, {window.rows} live rows "
               f"({window.requests} requests) against {window.reference_rows} training rows.")
    table = result.table()
    print_table(["feature", *table.columns],
                [(name, *(_cell(v) for v in row)) for name, row in zip(table.index, table.itertuples(index=False))],
                title="Drift per feature, the highest score first")
    if result.performance is not None:
        perf = result.performance
        click.echo(f"Labels: {perf.labelled_rows} labelled rows ({perf.share_labelled:.1%}); "
                   f"{perf.unmatched_labels} matched no logged row.")
        print_table(["metric", "live", "evaluation"],
                    [(k, _cell(v), _cell(perf.evaluation.get(k))) for k, v in perf.metrics.items()])
    color = {"healthy": "green", "drift": "yellow"}.get(verdict.status, "red")
    click.secho(f"Verdict: {verdict.status} (exit code {verdict.exit_code})", fg=color, bold=True)
    for name in verdict.drifted:
        click.echo(f"  moved: {name}")
    for name in verdict.quality_issues:
        click.echo(f"  data quality: {name}")
    for reason in verdict.gate_failures:
        click.echo(f"  below the gate: {reason}")
    report = record["stages"]["monitor"].get("report")
    if report:
        click.echo(f"Report: {record['id']}/{report}")


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"  # NaN: not measured (no mean shift of a category)
    return "" if value is None else str(value)
