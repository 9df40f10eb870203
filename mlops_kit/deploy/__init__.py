"""05_deploy: where the packaged model runs.

``mlops_kit.deploy.local`` runs it on this machine (``deploy.target: local``);
``mlops_kit.deploy.k8s`` deploys it to Kubernetes / MicroK8s (``deploy.target: microk8s``).
"""
