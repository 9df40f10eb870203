"""The kit's one Kubernetes package, low in the house: deploy (:mod:`mlops_kit.deploy.k8s`),
the team's server (:mod:`mlops_kit.server.kube`, the SSH tunnel) and the Kubernetes executor
(:mod:`mlops_kit.execution.kubernetes`) all reach the API through it.

* :func:`load_api_client`: the client for ``$KUBECONFIG``, ``~/.kube/config`` or ``microk8s config``;
  :func:`parse_foreign_kubeconfig` checks a kubeconfig printed by another machine field by field
  and :func:`client_from_config` builds a client from it in memory (never written to a file
  by the kit).
* :class:`Cluster`: plain-dict get / server-side apply / create / delete / list / logs, every
  API failure turned into a :class:`~mlops_kit.errors.K8sDeployError` whose ``reason`` is one
  of the failure kinds (:class:`~mlops_kit.errors.FailureReason`).
* :func:`schema_problems`: objects checked against the Kubernetes schema (strict, offline).
"""

from ._cluster import FIELD_MANAGER, KINDS, Cluster
from ._schema import schema_problems
from ._kubeconfig import ForeignKubeconfig, client_from_config, load_api_client, parse_foreign_kubeconfig

__all__ = ["FIELD_MANAGER", "KINDS", "Cluster", "ForeignKubeconfig", "client_from_config", "load_api_client",
           "parse_foreign_kubeconfig", "schema_problems"]
