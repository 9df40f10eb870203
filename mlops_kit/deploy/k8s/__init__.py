"""Deploy to Kubernetes / MicroK8s (``deploy.target: microk8s``).

``deploy(run_dir, params)`` renders ``k8s/`` with the run's image digest and parameters,
validates it (schema, strict, plus meaning checks), shows the diff, server-side applies it in
order, waits for the rollout like ``kubectl rollout status``, smoke-tests the Service and
rolls back to the last good release when the wait or the smoke test fails. ``status``,
``rollback`` and ``undeploy`` work on the same ``deploy.namespace``/``deploy.name``.
Every function takes ``api_client`` (a ``kubernetes.client.ApiClient``; default: from the
kubeconfig) and ``log`` (a callback for progress lines).
"""

from ...kube import FIELD_MANAGER, Cluster, ForeignKubeconfig, load_api_client, parse_foreign_kubeconfig
from ._deploy import apply_objects, connect, deploy, prepare, rollback, smoke_test, status, undeploy
from ._diff import diff_objects
from ._releases import read_history
from ._render import image_reference, load_manifests, manifests_dir, render, secret_object, secret_values
from ._rollout import rollout_state, wait_for_rollout
from ._validate import meaning_problems, schema_problems, validate

__all__ = [
    "FIELD_MANAGER", "Cluster", "ForeignKubeconfig", "apply_objects", "connect", "deploy", "diff_objects",
    "image_reference", "load_api_client", "load_manifests", "manifests_dir", "meaning_problems",
    "parse_foreign_kubeconfig", "prepare", "read_history",
    "render", "rollback", "rollout_state", "schema_problems", "secret_object",
    "secret_values", "smoke_test", "status", "undeploy", "validate",
    "wait_for_rollout",
]
