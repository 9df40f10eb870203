"""ipywidgets panels for JupyterLab (and Voila): the pipeline, the runs, the image build,
the deployment and its monitoring. They hold no logic of their own: each calls the same
functions as the CLI, long work runs on a worker thread, and errors show in the panel.

    from mlops_kit.panels import PipelinePanel, RunsPanel
    pipeline, runs = PipelinePanel(), RunsPanel()
    pipeline.on_run_finished(lambda record: runs.refresh())
"""

from .build import BuildPanel
from .deploy import DeployPanel
from .monitor import MonitorPanel
from .pipeline import PipelinePanel
from .runs import RunsPanel

__all__ = ["BuildPanel", "DeployPanel", "MonitorPanel", "PipelinePanel", "RunsPanel"]
