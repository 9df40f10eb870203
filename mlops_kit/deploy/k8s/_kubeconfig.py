"""Find the cluster: ``$KUBECONFIG``, else ``~/.kube/config``, else ``microk8s config``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Mapping

import yaml

from ...errors import K8sDeployError


def load_api_client(*, environ: Mapping[str, str] | None = None,
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run):
    """A ``kubernetes.client.ApiClient`` and a line saying where its configuration came from."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    environ = os.environ if environ is None else environ
    try:
        if environ.get("KUBECONFIG"):
            files = [f for f in environ["KUBECONFIG"].split(os.pathsep) if f]
            existing = [f for f in files if Path(f).expanduser().is_file()]
            if not existing:
                raise K8sDeployError(f"KUBECONFIG names {environ['KUBECONFIG']!r}, but no such file exists.",
                                  reason="NoKubeconfig",
                                  hint="point KUBECONFIG at a kubeconfig file, e.g. `microk8s config > ~/.kube/config`.")
            client = config.new_client_from_config(config_file=os.pathsep.join(existing))
            return client, f"kubeconfig {os.pathsep.join(existing)} (KUBECONFIG)"
        default = Path(environ.get("HOME", str(Path.home()))) / ".kube" / "config"
        if default.is_file():
            return config.new_client_from_config(config_file=str(default)), f"kubeconfig {default}"
        microk8s = shutil.which("microk8s", path=environ.get("PATH"))
        if microk8s:
            result = run([microk8s, "config"], capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise K8sDeployError(f"`microk8s config` failed: {(result.stderr or result.stdout).strip()[:500]}",
                                  reason="NoKubeconfig",
                                  hint="is MicroK8s running (`microk8s status --wait-ready`) and are you in the "
                                       "microk8s group (`sudo usermod -a -G microk8s $USER`, then log in again)?")
            return config.new_client_from_config_dict(yaml.safe_load(result.stdout)), "`microk8s config`"
    except ConfigException as exc:
        raise K8sDeployError(f"The kubeconfig cannot be used: {exc}", reason="NoKubeconfig") from None
    raise K8sDeployError("No Kubernetes cluster configured: KUBECONFIG is unset, ~/.kube/config does not exist "
                      "and `microk8s` is not on PATH.", reason="NoKubeconfig",
                      hint="install MicroK8s (`sudo snap install microk8s --classic`), or set KUBECONFIG; "
                           "deploy.target: local needs no cluster.")
