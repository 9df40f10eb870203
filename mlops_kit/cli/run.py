"""``mlops-kit run`` and ``mlops-kit params``."""

from __future__ import annotations

import sys
import time

import click

from ..stages import STAGE_NAMES


def _params_option(func):
    func = click.option("-p", "--params", "params_file", type=click.Path(dir_okay=False),
                        help="Parameter file (default: parameters/default.yaml).")(func)
    func = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                        help="Override one parameter, typed by the schema. Repeatable.")(func)
    return func


@click.command()
@_params_option
@click.option("--stages", help=f"Comma-separated subset of {','.join(STAGE_NAMES)} "
              "(default: the parameter file's `stages`).")
@click.option("--reuse-from", metavar="RUN_ID", help="Take the inputs of the selected stages from this run "
              "(default: the newest run that has them).")
@click.option("--no-cache", is_flag=True, help="Execute every stage, even those unchanged since an earlier run.")
@click.option("--explain", is_flag=True, help="Print, per stage, whether it would run or be reused, and why; run nothing.")
@click.option("--resume", metavar="RUN_ID", help="Continue a failed or interrupted run from its first stage "
              "that did not succeed, in its own folder, with its own parameters (--set execution.*=... may change "
              "where its stages run, e.g. execution.memory after OOMKilled).")
@click.option("--dry-run", is_flag=True, help="With execution.mode kubernetes: print the Jobs the run would "
              "create (YAML, one document each); create nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the final run record as JSON.")
def run(params_file, overrides, stages, reuse_from, no_cache, explain, resume, as_json, dry_run=False):
    """Run the pipeline: each stage's notebook executed by papermill into runs/<run_id>/.

    Stages unchanged since an earlier run (same notebook, parameters, inputs and package
    versions) are reused from it, not executed again.
    """
    import signal

    from .. import runner
    from ..params import load_params

    runner.skip_iri_grammar()  # before anything imports jsonschema
    # where the run's time goes outside its stages, from this process's start (run.json's overhead)
    phases = runner.Phases(origin=runner.process_started())
    phases.since_origin("start-up")
    runner.mark("cli: process started", at=runner.process_started())
    runner.mark("cli: run command")

    if resume and (params_file or stages):
        raise click.UsageError("--resume continues a run with its own parameters and stages: "
                               "it takes no -p or --stages (and --set only for execution.*).")
    selected = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    if dry_run:
        import yaml

        from ..execution.kubernetes import planned_jobs

        loaded = load_params(params_file, overrides)
        jobs = planned_jobs(loaded, stages=selected, reuse_from=reuse_from, use_cache=not no_cache)
        if jobs and not loaded.params.execution.image:
            click.echo(f"stage image {jobs[0]['spec']['template']['spec']['containers'][0]['image']} (the kit's, "
                       "from this environment and checkout: built or found cached, and shipped, when the run "
                       "starts)", err=True)
        click.echo(yaml.safe_dump_all(jobs, sort_keys=False, explicit_start=True), nl=False)
        return
    if explain:
        loaded = load_params(params_file, overrides)
        _note_sweep_section(loaded, params_file)
        _print_plan(runner.explain(loaded, stages=selected, reuse_from=reuse_from, use_cache=not no_cache))
        return
    from ..execution.local import discard_prestarted, prestart
    from ..params import resume_params

    with phases.measure("parameters"):
        if resume:
            from ..ledger import open_run

            kubernetes = resume_params(open_run(resume).path, overrides).execution.mode == "kubernetes"
        else:
            loaded = load_params(params_file, overrides)
            kubernetes = loaded.params.execution.mode == "kubernetes"
            _note_sweep_section(loaded, params_file)
    # the kernels' parent (started first, by run_cli) imports pandas and scikit-learn while this
    # process checks the parameters and plans the run (stopped below if no stage runs); no
    # local kernel for Jobs
    if kubernetes:
        discard_prestarted()
    else:
        with phases.measure("kernel start"):
            prestart()
        runner.mark("cli: parameters loaded")
    # SIGTERM (a service manager, `kill`) ends the run like Ctrl-C: recorded as interrupted
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    printer = _ProgressPrinter(quiet=as_json)
    try:
        if resume:
            record = runner.resume_run(resume, use_cache=not no_cache, on_event=printer, phases=phases,
                                       overrides=overrides)
        else:
            record = runner.run_pipeline(loaded, stages=selected, reuse_from=reuse_from, use_cache=not no_cache,
                                         on_event=printer, phases=phases)
    finally:
        discard_prestarted()
    if as_json:
        from ._output import print_json
        print_json(record)
    else:
        _print_summary(record)


class _ProgressPrinter:
    """One line per stage as the run goes (to stderr, so --json stays clean)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.started = time.perf_counter()

    def __call__(self, event) -> None:
        out = sys.stderr
        if event.kind == "run_started":
            out.write(f"run {event.run_id}: {', '.join(event.data['stages'])}\n"
                      f"  folder {event.data['run_dir']}\n")
        elif event.kind == "stage_started":
            out.write(f"  {event.stage:<9} running ...\n")
        elif event.kind == "stage_finished":
            out.write(f"  {event.stage:<9} succeeded in {event.data['seconds']:.1f} s\n")
        elif event.kind == "stage_cached":
            out.write(f"  {event.stage:<9} {event.message}\n")
        elif event.kind == "log":
            out.write(f"  {event.stage or '':<9} {event.message}\n")
        elif event.kind == "stage_failed":
            out.write(f"  {event.stage:<9} FAILED\n")
        out.flush()



def _print_plan(plans) -> None:
    for plan in plans:
        verdict = f"reuse from run {plan.cached_from.run_id}" if plan.cached_from else "run"
        click.echo(f"{plan.stage.name:<9} {verdict:<32} {plan.reason}")


def _print_summary(record: dict) -> None:
    from .. import _paths

    folder = _paths.runs_dir() / record["id"]
    click.echo(f"Run {record['id']} {record['status']}.")
    metrics = record.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if k != "gate_passed"}
    if shown:
        click.echo("Metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        click.echo(f"Quality gate: {'passed' if metrics.get('gate_passed') else 'FAILED'}")
    click.echo(f"Executed notebooks: {folder / 'notebooks'}")
    click.echo(f"HTML reports:       {folder / 'reports'}")
    click.echo(f"Artifacts:          {folder / 'artifacts'}")


@click.command()
@_params_option
@click.option("--json", "as_json", is_flag=True, help="Print the validated parameters as JSON.")
def params(params_file, overrides, as_json):
    """Validate a parameter file and show the values a run would use."""
    from ..params import RunParams, load_params

    loaded = load_params(params_file, overrides)
    values = loaded.params.model_dump(mode="json")
    if as_json:
        from ._output import print_json
        print_json(values)
        return
    from ._output import print_table
    rows = []
    for section, value in values.items():
        if isinstance(value, dict) and section in RunParams.model_fields and section != "stages":
            for key, item in value.items():
                field = type(getattr(loaded.params, section)).model_fields[key]
                rows.append((f"{section}.{key}", item, field.description or ""))
        else:
            rows.append((section, value, RunParams.model_fields[section].description or ""))
    print_table(["key", "value", "meaning"], rows,
                title=" + ".join(str(f) for f in loaded.files) + (" + --set" if overrides else ""))


def _note_sweep_section(loaded, params_file) -> None:
    """A parameter file's ``sweep:`` section is the grid of ``mlops-kit sweep``; ``run`` runs the
    file's own settings once, and says so rather than leave the grid silently unused."""
    if loaded.sweep:
        trials = 1
        for values in loaded.sweep.values():
            trials *= len(values)
        click.echo(f"Note: the sweep: section of {params_file} ({trials} trial(s)) is the grid of "
                   f"`mlops-kit sweep -p {params_file}`; `mlops-kit run` runs the file's own settings once.",
                   err=True)
