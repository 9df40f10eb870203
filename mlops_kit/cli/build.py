"""``mlops-kit build RUN_ID`` (04_package outside a notebook) and ``mlops-kit base build``."""

from __future__ import annotations

import json

import click

from ._options import load_for_run, params_option, set_option


@click.command()
@click.argument("run_id", required=False)
@click.option("--builder", type=click.Choice(["auto", "layers", "buildah", "docker", "podman", "nerdctl"]),
              default=None, help="image builder (default: the run's package.builder)")
@click.option("--no-import", is_flag=True, help="build only; do not import into containerd")
@params_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="print image.json")
def build(run_id, builder, no_import, params_file, overrides, as_json):
    """Build the model server image of run RUN_ID (default: the champion) and import it into
    containerd. Refused for a run that was not evaluated or failed its quality gate.

    The package.* settings are the run's own unless -p/--set say otherwise, e.g.
    --set package.containerd_socket=/run/containerd/containerd.sock."""
    from .. import image
    from ..ledger import run_dir_or_champion

    run_dir = run_dir_or_champion(run_id)
    params = load_for_run(params_file, overrides, run_dir)
    record = image.package(run_dir, params, builder=builder, import_into_containerd=False if no_import else None,
                           log=lambda line: click.echo(line, err=as_json))
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    mib = 1024 * 1024
    click.echo(f"{record['ref']}\n  digest {record['digest']}\n  {record['size']['compressed'] / mib:.1f} MiB "
               f"compressed, {(record['size']['unpacked'] or 0) / mib:.1f} MiB unpacked, "
               f"{len(record['layers'])} layers, builder {record['builder']}, {record['seconds']['total']:.1f} s")


@click.group()
def base():
    """The base image (Debian 12 python3 + the training environment's wheels), cached; and the
    stage image of execution.mode kubernetes (`base build --stage`)."""


@base.command("build")
@click.option("--force", is_flag=True, help="rebuild even when cached")
@click.option("--stage", is_flag=True, help="the stage image instead: the pods of execution.mode kubernetes run it "
              "(every runtime requirement of mlops-kit at this environment's versions, plus this checkout's "
              "mlops_kit/ and notebooks/); `mlops-kit run` builds it too when execution.image is empty")
def base_build(force, stage):
    """Build (or find in the cache) the base for this environment's versions; with --stage,
    the stage image (printed: its reference, a content hash, and its OCI layout)."""
    from .. import image

    if stage:
        built = image.stage_image(force=force, log=click.echo)
        mib = 1024 * 1024
        click.echo(f"{built.ref}\n  {built.layout}\n  {built.compressed_size / mib:.1f} MiB compressed, "
                   f"{len(built.layers)} layers, {built.seconds:.1f} s")
        return
    found = image.build_base(force=force, log=click.echo)
    click.echo(f"{found.ref}\n  {found.layout}\n  " + " ".join(f"{k}=={v}" for k, v in found.pins.items()))
