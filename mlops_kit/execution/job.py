"""A stage inside a Kubernetes Job's pod: ``python -m mlops_kit.execution.job NOTEBOOK PARAMETERS``.

papermill executes the stage notebook (copied into the run folder on the volume by the
executor) in place with the JSON ``PARAMETERS``, as the local executor does. How it ends is
said twice, for the two readers of the pod:

* the exit code, for the Job's ``podFailurePolicy``: :data:`EXIT_CELL_FAILED` (a cell raised,
  a parameter error included) and :data:`EXIT_BAD_INPUT` (this command's own arguments) fail
  the Job at once; anything else (:data:`EXIT_KERNEL_DIED`, OOMKilled's 137, a node going
  away) is retried;
* the termination message (``/dev/termination-log``, read through the API): the failing
  cell's index, the exception's type and message, as JSON.

Imports nothing heavy before papermill runs; the cell output goes to the pod's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from . import skip_iri_grammar
from .local import KERNEL_NAME, _error_text, _failing_cell, _running_cell

EXIT_CELL_FAILED = 3
EXIT_BAD_INPUT = 4
EXIT_KERNEL_DIED = 5
#: The exit codes that fail the Job without a retry (its podFailurePolicy).
FAIL_AT_ONCE = (EXIT_CELL_FAILED, EXIT_BAD_INPUT)
TERMINATION_LOG = "/dev/termination-log"
#: The kubelet keeps at most 4096 bytes of a termination message.
_MESSAGE_LIMIT = 4000


def _say(message: dict) -> None:
    text = json.dumps(message)
    if len(text) > _MESSAGE_LIMIT:
        message = {**message, "detail": message.get("detail", "")[:_MESSAGE_LIMIT - len(text) - 20] + " ..."}
        text = json.dumps(message)
    try:
        Path(os.environ.get("MLOPS_KIT_TERMINATION_LOG", TERMINATION_LOG)).write_text(text)
    except OSError:
        pass                       # no termination log (run by hand): the exit code still says it
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        notebook_arg, parameters_arg = args
        notebook = Path(notebook_arg)
        parameters = json.loads(parameters_arg)
        if not isinstance(parameters, dict):
            raise ValueError(f"the parameters must be a JSON object. Got {type(parameters).__name__} instead.")
        if not notebook.is_file():
            raise ValueError(f"the stage notebook must exist on the volume. Got no file at {notebook} instead.")
    except ValueError as exc:
        _say({"exception": "BadJobInput", "detail": str(exc), "cell_index": None})
        return EXIT_BAD_INPUT
    import logging

    skip_iri_grammar()               # 2 s of jsonschema's IRI grammar that no notebook needs
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    # the kernel boots while this process imports papermill (seconds of imports each)
    km = AsyncKernelManager(kernel_name=KERNEL_NAME)
    run_sync(km.start_kernel)(extra_arguments=["--IPKernelApp.log_level=ERROR"], cwd=str(notebook.parent))
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)   # cell output: the pod's log
    try:
        papermill.execute_notebook(str(notebook), str(notebook), parameters=parameters, kernel_name=KERNEL_NAME,
                                   km=km, progress_bar=False, log_output=True, cwd=str(notebook.parent))
    except PapermillExecutionError as exc:
        _say({"cell_index": _failing_cell(notebook, default=exc.cell_index), "exception": exc.ename,
              "detail": _error_text(exc.evalue)})
        return EXIT_CELL_FAILED
    except DeadKernelError:          # killed (out of memory, most often): retried, unlike a cell's error
        _say({"cell_index": _running_cell(notebook), "exception": "DeadKernelError",
              "detail": "the kernel died (killed, or out of memory) while the stage ran"})
        return EXIT_KERNEL_DIED
    finally:
        with contextlib.suppress(Exception):
            run_sync(km.shutdown_kernel)(now=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
