"""Check rendered manifests: the Kubernetes schema (strict) and what the schema cannot see.

The schema check is kubernetes-validate in strict mode (unknown fields are errors) for
``deploy.kubernetes_version``; it reports the first problem of each object. The meaning
checks: names are DNS names, the Deployment's selector matches its pod labels, the Service
selects those pods and targets a port the container has, the ConfigMap/Secret the pods read
are the ones rendered, and the image is pinned (never ``:latest``, never untagged).
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import ManifestError
from ...kube import schema_problems

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")

Problem = tuple[str, str, str, str]


def validate(objects: list[dict], version: str, *, source: str = "rendered") -> list[Problem]:
    """Raise :class:`ManifestError` listing every problem found; return [] when all is well."""
    problems = schema_problems(objects, version, source=source) + meaning_problems(objects, source=source)
    if problems:
        raise ManifestError(problems, version=version)
    return problems


def meaning_problems(objects: list[dict], *, source: str = "rendered") -> list[Problem]:
    problems: list[Problem] = []
    add = problems.append
    by_kind: dict[str, list[dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind", "?"), []).append(obj)
        src, ident = _where(obj, source)
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        pattern, what = ((_DNS_1035, "a DNS-1035 label (starts with a letter)") if obj.get("kind") == "Service"
                         else (_DNS_LABEL, "a DNS label") if obj.get("kind") == "Namespace"
                         else (_DNS_SUBDOMAIN, "a DNS subdomain"))
        if not isinstance(name, str) or not pattern.match(name):
            add((src, ident, "metadata.name", f"must be {what}. Got {name!r} instead."))
        namespace = meta.get("namespace")
        if namespace is not None and not _DNS_LABEL.match(str(namespace)):
            add((src, ident, "metadata.namespace", f"must be a DNS label. Got {namespace!r} instead."))
        for field in ("labels",):
            for key, value in (meta.get(field) or {}).items():
                _check_label(add, src, ident, f"metadata.labels.{key}", key, value)

    namespaces = {o["metadata"]["name"] for o in by_kind.get("Namespace", [])}
    for obj in objects:
        ns = (obj.get("metadata") or {}).get("namespace")
        if namespaces and ns is not None and ns not in namespaces:
            src, ident = _where(obj, source)
            add((src, ident, "metadata.namespace", f"must be the rendered Namespace "
                 f"{sorted(namespaces)[0]!r}. Got {ns!r} instead."))

    config_maps = {o["metadata"].get("name") for o in by_kind.get("ConfigMap", [])}
    for dep in by_kind.get("Deployment", []):
        src, ident = _where(dep, source)
        spec = dep.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        template = spec.get("template") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        for key, value in (pod_labels).items():
            _check_label(add, src, ident, f"spec.template.metadata.labels.{key}", key, value)
        if not selector:
            add((src, ident, "spec.selector.matchLabels", "must select the pods by label. Got none instead."))
        missing = {k: v for k, v in selector.items() if pod_labels.get(k) != v}
        if missing:
            add((src, ident, "spec.selector.matchLabels",
                 f"must match spec.template.metadata.labels. Got {missing} not in the pod labels instead."))
        pod = template.get("spec") or {}
        for i, container in enumerate(pod.get("containers") or []):
            field = f"spec.template.spec.containers[{i}]"
            image = container.get("image", "")
            if not _pinned(image):
                add((src, ident, f"{field}.image",
                     f"must be pinned by a tag other than latest or by a digest. Got {image!r} instead."))
            policy = container.get("imagePullPolicy")
            if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
                add((src, ident, f"{field}.imagePullPolicy",
                     f"must be Always, IfNotPresent or Never. Got {policy!r} instead."))
            ports = {p.get("name") for p in container.get("ports") or []} | \
                    {p.get("containerPort") for p in container.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
                if port is not None and port not in ports:
                    add((src, ident, f"{field}.{probe}.httpGet.port",
                         f"must be a port of the container ({sorted(map(str, ports))}). Got {port!r} instead."))
            for j, ref in enumerate(container.get("envFrom") or []):
                cm = (ref.get("configMapRef") or {})
                if cm and not cm.get("optional") and cm.get("name") not in config_maps:
                    add((src, ident, f"{field}.envFrom[{j}].configMapRef.name",
                         f"must name a rendered ConfigMap ({sorted(config_maps)}). Got {cm.get('name')!r} instead."))
        strategy = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        if strategy.get("maxUnavailable") not in (0, "0", "0%"):
            add((src, ident, "spec.strategy.rollingUpdate.maxUnavailable",
                 f"must be 0 (never fewer ready pods than asked). Got {strategy.get('maxUnavailable')!r} instead."))

    for svc in by_kind.get("Service", []):
        src, ident = _where(svc, source)
        spec = svc.get("spec") or {}
        selector = spec.get("selector") or {}
        targets = [d for d in by_kind.get("Deployment", [])
                   if selector and all(((d["spec"].get("template") or {}).get("metadata") or {})
                                       .get("labels", {}).get(k) == v for k, v in selector.items())]
        if not targets:
            add((src, ident, "spec.selector", f"must select the pods of a rendered Deployment. Got {selector} "
                 "instead, which selects none."))
        for i, port in enumerate(spec.get("ports") or []):
            if port.get("nodePort") is not None and spec.get("type") not in ("NodePort", "LoadBalancer"):
                add((src, ident, f"spec.ports[{i}].nodePort",
                     f"must be unset for type {spec.get('type')}. Got {port['nodePort']} instead."))
            target = port.get("targetPort")
            if target is not None and targets:
                names = {p.get("name") for d in targets for c in d["spec"]["template"]["spec"].get("containers", [])
                         for p in c.get("ports") or []}
                numbers = {p.get("containerPort") for d in targets
                           for c in d["spec"]["template"]["spec"].get("containers", []) for p in c.get("ports") or []}
                if target not in names and target not in numbers:
                    add((src, ident, f"spec.ports[{i}].targetPort",
                         f"must be a port of the selected pods ({sorted(map(str, names | numbers))}). "
                         f"Got {target!r} instead."))
    return problems


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def _check_label(add, src: str, ident: str, field: str, key: Any, value: Any) -> None:
    name = str(key).rsplit("/", 1)[-1]
    prefix = str(key).rsplit("/", 1)[0] if "/" in str(key) else None
    if not _LABEL_NAME.match(name) or (prefix is not None and not _DNS_SUBDOMAIN.match(prefix)):
        add((src, ident, field, f"the label key must be [prefix/]name (name at most 63 characters). "
             f"Got {key!r} instead."))
    if not isinstance(value, str) or not _LABEL_VALUE.match(value):
        add((src, ident, field, f"the label value must be at most 63 letters, digits, '-', '_' or '.', "
             f"starting and ending with a letter or digit. Got {value!r} instead."))


def _where(obj: dict, source: str) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("__source__", source), f"{obj.get('kind', '?')}/{meta.get('name', '?')}"
