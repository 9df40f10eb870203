"""A rendered Deployment's pod run the way the kubelet would run it, in a private containerd.

Test support for tests/test_manifest_contract.py (no tests here). Everything the container
gets comes from the rendered objects alone (Deployment, ConfigMaps, Secrets):

* image: the digest-pinned reference must name an image imported into containerd with
  that digest (the kubelet's ``imagePullPolicy: Never`` finds it there or fails);
* user and groups: ``runAsUser``/``runAsGroup`` (container over pod), ``fsGroup`` and
  ``supplementalGroups`` as extra groups, ``runAsNonRoot`` refused for uid 0;
* ``readOnlyRootFilesystem``, ``allowPrivilegeEscalation`` (no_new_privs), capabilities,
  the seccomp profile, the memory and CPU limits;
* ``command``/``args`` over the image's ENTRYPOINT/CMD, ``$(VAR)`` expanded, ``workingDir``;
* ``envFrom`` (ConfigMap, Secret) then ``env`` (literal values, ``configMapKeyRef``,
  ``secretKeyRef``) over the image's ENV, in Kubernetes' order;
* volumes: ``emptyDir`` (a fresh 0777 folder, or tmpfs for ``medium: Memory``), ``configMap``
  and ``secret`` (files), mounted at their ``mountPath``;
* a network namespace of its own, like a pod: the probes reach the ``containerPort`` from
  the host through ``nsenter`` into that namespace (so no host port is needed or taken),
  and the server must listen on a wildcard address, as the kubelet probes the pod IP.

Debian 12's ``ctr`` (containerd 1.6) has no ``--user``, so the container is created from an
OCI runtime spec, as the kubelet's CRI does: containerd's own spec for the image
(``ctr containers create --seccomp``: image ENV/WORKDIR/USER, default mounts and
capabilities, containerd's RuntimeDefault seccomp profile), the manifest put over it, the
image's root file system from ``ctr images mount --rw`` (runc remounts it read-only after
creating the mount points, as the CRI does), then ``ctr run --config``.

A field this translation does not know raises :class:`Unsupported` instead of being
ignored, so the contract can never pass by skipping part of the manifest.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from mlops_kit.image._containerd import Containerd

#: The image's interpreter, used by ``ctr tasks exec`` for the write checks (the server is Python).
EXEC_INTERPRETER = "python3"
_IDS = count()


class Unsupported(Exception):
    """The manifest uses a field this translation does not run: the test must not pass over it."""


class Disagreement(Exception):
    """The manifest and the image disagree in a way that stops the pod (no further check can run)."""


# --- the plan: the rendered objects read the way the kubelet reads them --------------------------

@dataclass
class Probe:
    kind: str
    path: str
    port: int
    headers: dict[str, str]
    timeout: float
    bound: float          # initialDelaySeconds + periodSeconds * failureThreshold


@dataclass
class Volume:
    name: str
    kind: str                                    # emptyDir | configMap | secret
    mount_path: str
    read_only: bool
    medium: str = ""
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class PodPlan:
    image: str
    uid: int | None
    gid: int | None
    extra_gids: list[int]
    run_as_non_root: bool
    read_only_root: bool
    no_new_privileges: bool
    drop_caps: list[str]
    add_caps: list[str]
    seccomp: str | None
    command: list[str] | None
    args: list[str] | None
    working_dir: str | None
    env: dict[str, str]
    secret_keys: set[str]                        # env names whose value comes from a Secret: never shown
    volumes: list[Volume]
    port: int
    probes: list[Probe]
    grace: float
    memory_limit: int | None
    cpu_limit_millis: int | None
    ports: dict = field(default_factory=dict)   # containerPort by name


_CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "workingDir", "ports", "env", "envFrom",
                   "startupProbe", "readinessProbe", "livenessProbe", "resources", "securityContext",
                   "volumeMounts", "terminationMessagePath", "terminationMessagePolicy"}
_POD_KEYS = {"containers", "volumes", "securityContext", "terminationGracePeriodSeconds",
             "automountServiceAccountToken", "enableServiceLinks", "serviceAccountName", "restartPolicy",
             "dnsPolicy", "schedulerName", "nodeSelector", "affinity", "tolerations"}


def plan(objects: list[dict]) -> PodPlan:
    """The pod of the (one) Deployment in ``objects``, its references resolved from the same list."""
    deployment = _only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    _known(pod, _POD_KEYS, "spec.template.spec")
    if len(pod["containers"]) != 1:
        raise Unsupported(f"the Deployment has {len(pod['containers'])} containers; the contract runs one")
    c = pod["containers"][0]
    _known(c, _CONTAINER_KEYS, f"containers[{c.get('name')}]")
    pod_sc, sc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    _known(pod_sc, {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups", "seccompProfile",
                    "fsGroupChangePolicy"}, "pod securityContext")
    _known(sc, {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
                "capabilities", "seccompProfile", "privileged"}, "container securityContext")
    if sc.get("privileged"):
        raise Unsupported("privileged containers")

    def sec(key, default=None):
        return sc.get(key, pod_sc.get(key, default))

    seccomp = (sec("seccompProfile") or {}).get("type")
    if seccomp not in (None, "RuntimeDefault", "Unconfined"):
        raise Unsupported(f"seccompProfile type {seccomp}")
    caps = sc.get("capabilities") or {}
    extra = [g for g in [pod_sc.get("fsGroup"), *(pod_sc.get("supplementalGroups") or [])] if g is not None]

    configmaps = {o["metadata"]["name"]: dict(o.get("data") or {}) for o in objects if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"]: _secret_data(o) for o in objects if o["kind"] == "Secret"}
    secret_keys: set[str] = set()
    env = _env(c, configmaps, secrets, deployment, secret_keys)
    ports = {p.get("name"): int(p["containerPort"]) for p in c.get("ports") or []}
    probes = [_probe(kind, c[kind], ports) for kind in ("startupProbe", "readinessProbe", "livenessProbe")
              if c.get(kind)]
    if not probes:
        raise Unsupported("a container without probes (nothing says when it is ready)")
    limits = (c.get("resources") or {}).get("limits") or {}
    return PodPlan(
        image=c["image"], uid=sec("runAsUser"), gid=sec("runAsGroup"), extra_gids=extra,
        run_as_non_root=bool(sec("runAsNonRoot", False)),
        read_only_root=bool(sc.get("readOnlyRootFilesystem", False)),
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        drop_caps=list(caps.get("drop") or []), add_caps=list(caps.get("add") or []), seccomp=seccomp,
        command=[_expand(a, env) for a in c["command"]] if "command" in c else None,
        args=[_expand(a, env) for a in c["args"]] if "args" in c else None,
        working_dir=c.get("workingDir"), env=env, secret_keys=secret_keys,
        volumes=_volumes(pod, c, configmaps, secrets), port=probes[0].port, probes=probes,
        grace=float(pod.get("terminationGracePeriodSeconds", 30)),
        memory_limit=_bytes(limits["memory"]) if "memory" in limits else None,
        cpu_limit_millis=_millis(limits["cpu"]) if "cpu" in limits else None,
        ports=ports,
    )


def _only(objects, kind):
    found = [o for o in objects if o.get("kind") == kind]
    if len(found) != 1:
        raise Unsupported(f"{len(found)} {kind} objects; the contract runs one")
    return found[0]


def _known(mapping: dict, keys: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - keys)
    if unknown:
        raise Unsupported(f"{where}: {', '.join(unknown)}")


def _secret_data(obj: dict) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return {**data, **(obj.get("stringData") or {})}


def _env(c: dict, configmaps: dict, secrets: dict, deployment: dict, secret_keys: set[str]) -> dict[str, str]:
    """envFrom (in order), then env (in order, ``$(VAR)`` expanded against what came before);
    the names whose value comes from a Secret are added to ``secret_keys``."""
    env: dict[str, str] = {}
    for source in c.get("envFrom") or []:
        _known(source, {"configMapRef", "secretRef", "prefix"}, "envFrom")
        ref = source.get("configMapRef") or source.get("secretRef")
        table = configmaps if "configMapRef" in source else secrets
        what = "ConfigMap" if "configMapRef" in source else "Secret"
        if ref["name"] not in table:
            if ref.get("optional"):
                continue
            raise Disagreement(f"envFrom names {what} {ref['name']!r}, which is not among the rendered objects")
        names = {source.get("prefix", "") + k: v for k, v in table[ref["name"]].items()}
        env.update(names)
        secret_keys.difference_update(names)
        if what == "Secret":
            secret_keys.update(names)
    for item in c.get("env") or []:
        name = item["name"]
        secret_keys.discard(name)
        if "value" in item:
            env[name] = _expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom") or {}
        if "configMapKeyRef" in source or "secretKeyRef" in source:
            ref = source.get("configMapKeyRef") or source.get("secretKeyRef")
            table, what = (configmaps, "ConfigMap") if "configMapKeyRef" in source else (secrets, "Secret")
            value = table.get(ref["name"], {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise Disagreement(f"env {name}: {what} {ref['name']!r} key {ref['key']!r} is not among the "
                                   "rendered objects")
            env[name] = value
            if what == "Secret":
                secret_keys.add(name)
        elif "fieldRef" in source and source["fieldRef"]["fieldPath"] in ("metadata.name", "metadata.namespace"):
            meta = deployment["metadata"]
            env[name] = meta["namespace"] if source["fieldRef"]["fieldPath"] == "metadata.namespace" \
                else meta["name"] + "-contract"
        else:
            raise Unsupported(f"env {name}: valueFrom {sorted(source)}")
    return env


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)``: replaced when VAR is defined, kept as is otherwise; ``$$`` is ``$``."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _probe(kind: str, spec: dict, ports: dict[str | None, int]) -> Probe:
    _known(spec, {"httpGet", "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold",
                  "successThreshold", "terminationGracePeriodSeconds"}, kind)
    get = spec["httpGet"]
    _known(get, {"path", "port", "scheme", "httpHeaders"}, f"{kind}.httpGet")
    if get.get("scheme", "HTTP") != "HTTP":
        raise Unsupported(f"{kind} scheme {get['scheme']}")
    port = get["port"]
    if isinstance(port, str):
        if port not in ports:
            raise Disagreement(f"{kind} names port {port!r}; the container declares {sorted(map(str, ports))}")
        port = ports[port]
    return Probe(kind, get.get("path", "/"), int(port), {h["name"]: h["value"] for h in get.get("httpHeaders") or []},
                 timeout=float(spec.get("timeoutSeconds", 1)),
                 bound=float(spec.get("initialDelaySeconds", 0))
                 + float(spec.get("periodSeconds", 10)) * int(spec.get("failureThreshold", 3)))


def _volumes(pod: dict, c: dict, configmaps: dict, secrets: dict) -> list[Volume]:
    declared = {v["name"]: v for v in pod.get("volumes") or []}
    volumes = []
    for mount in c.get("volumeMounts") or []:
        _known(mount, {"name", "mountPath", "readOnly"}, f"volumeMounts[{mount.get('name')}]")
        if mount["name"] not in declared:
            raise Disagreement(f"volumeMounts names volume {mount['name']!r}, which the pod does not declare")
        v = declared[mount["name"]]
        ro = bool(mount.get("readOnly", False))
        if "emptyDir" in v:
            volumes.append(Volume(v["name"], "emptyDir", mount["mountPath"], ro,
                                  medium=(v["emptyDir"] or {}).get("medium", "")))
        elif "configMap" in v or "secret" in v:
            kind = "configMap" if "configMap" in v else "secret"
            name = v[kind].get("name") or v[kind].get("secretName")
            table = configmaps if kind == "configMap" else secrets
            if name not in table and not v[kind].get("optional"):
                raise Disagreement(f"volume {v['name']!r} names {kind} {name!r}, which is not among the rendered "
                                   "objects")
            volumes.append(Volume(v["name"], kind, mount["mountPath"], True,
                                  files={k: s.encode() for k, s in table.get(name, {}).items()}))
        else:
            raise Unsupported(f"volume {v['name']!r} of kind {sorted(set(v) - {'name'})}")
    return volumes


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")


def _bytes(quantity) -> int:
    number, unit = _QUANTITY.match(str(quantity)).groups()
    scale = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[unit]
    return int(float(number) * scale)


def _millis(quantity) -> int:
    number, unit = _QUANTITY.match(str(quantity)).groups()
    return int(float(number)) if unit == "m" else int(float(number) * 1000)


# --- running it ---------------------------------------------------------------------------------

@dataclass
class Pod:
    id: str
    pid: int
    log: Path
    plan: PodPlan
    containerd: Containerd

    def http(self, method: str, port: int, path: str, *, body: bytes = b"", headers=None,
             timeout: float = 5.0) -> dict:
        """A request from the host into the pod's network namespace: ``{"status", "body"}`` or ``{"error"}``."""
        proc = subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", sys.executable, "-c", _HTTP, method,
                               str(port), path, str(timeout), json.dumps(headers or {})],
                              input=body, capture_output=True, timeout=timeout + 60, check=False)
        if proc.returncode != 0:
            return {"error": proc.stderr.decode(errors="replace").strip()}
        return json.loads(proc.stdout)

    def exec(self, *argv: str) -> subprocess.CompletedProcess:
        """A process in the container with the container's own user, groups and capabilities."""
        return subprocess.run(self.containerd.command("tasks", "exec", "--exec-id", f"x{next(_IDS)}", self.id,
                                                      *argv), capture_output=True, text=True, timeout=120,
                              check=False)

    def running(self) -> bool:
        return self.containerd.task_status(self.id) == "RUNNING"

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


_HTTP = r"""
import http.client, json, sys
method, port, path, timeout, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
body = sys.stdin.buffer.read() or None
headers = json.loads(headers)
if body:
    headers.setdefault("Content-Type", "application/json")
try:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    print(json.dumps({"status": resp.status, "body": resp.read().decode("utf-8", "replace")}))
except OSError as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


def resolve_image(containerd: Containerd, reference: str) -> str:
    """The name under which containerd holds the image ``reference`` pins (``name[:tag]@sha256:...``)."""
    name, _, digest = reference.partition("@")
    if not digest:
        raise Disagreement(f"image {reference!r} is not pinned by digest")
    name = _normalize(name)
    listing = containerd.ctr("images", "ls", step="ctr images ls").stdout.decode().splitlines()[1:]
    held = {parts[0]: parts[2] for parts in (line.split() for line in listing) if len(parts) > 2}
    repository = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    if held.get(name) == digest:
        return name
    for other, other_digest in held.items():
        if other_digest == digest and other.split("@")[0].rsplit(":", 1)[0] == repository:
            return other
    found = f"{held[name]} under that name" if name in held else "no image of that name"
    raise Disagreement(f"image {reference!r}: containerd holds {found}; the manifest pins {digest}")


def _normalize(name: str) -> str:
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def start(p: PodPlan, containerd: Containerd, workdir: Path) -> Pod:
    """Create and start the container (detached); raises :class:`Disagreement` when it cannot start."""
    image = resolve_image(containerd, p.image)
    pod_id = f"contract-{os.getpid()}-{next(_IDS)}"
    folder = workdir / pod_id
    folder.mkdir(parents=True)
    spec = _image_spec(containerd, image, pod_id)
    config = _image_config(containerd, image)

    uid = p.uid if p.uid is not None else spec["process"]["user"]["uid"]
    gid = p.gid if p.gid is not None else spec["process"]["user"]["gid"]
    if p.run_as_non_root and uid == 0:
        raise Disagreement("runAsNonRoot is true but the container would run as uid 0 (the kubelet refuses it)")
    process = spec["process"]
    process["user"] = {"uid": uid, "gid": gid, "additionalGids": sorted({gid, *p.extra_gids})}
    entrypoint, cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
    if p.command is not None:
        process["args"] = p.command + (p.args or [])
    elif p.args is not None:
        process["args"] = entrypoint + p.args
    else:
        process["args"] = entrypoint + cmd
    if not process["args"]:
        raise Disagreement("neither the manifest nor the image says what to run")
    env = dict(e.split("=", 1) for e in process["env"])
    env.update(p.env)
    process["env"] = [f"{k}={v}" for k, v in env.items()]
    if p.working_dir:
        process["cwd"] = p.working_dir
    process["noNewPrivileges"] = p.no_new_privileges
    caps = process["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        names = [] if "ALL" in p.drop_caps else [c for c in caps.get(key, []) if c[4:] not in p.drop_caps]
        caps[key] = sorted(set(names) | {f"CAP_{c}" for c in p.add_caps})
    if p.seccomp != "RuntimeDefault":
        spec["linux"].pop("seccomp", None)       # the kubelet's default is Unconfined
    resources = spec["linux"].setdefault("resources", {})
    if p.memory_limit:
        resources["memory"] = {"limit": p.memory_limit}
    if p.cpu_limit_millis:
        resources["cpu"] = {"quota": p.cpu_limit_millis * 100, "period": 100_000}
    for volume in p.volumes:
        spec["mounts"].append(_mount(volume, folder, gid))

    rootfs = folder / "rootfs"
    rootfs.mkdir()
    containerd.ctr("images", "mount", "--rw", image, str(rootfs), step="ctr images mount")
    spec["root"] = {"path": str(rootfs), "readonly": p.read_only_root}
    (folder / "config.json").write_text(json.dumps(spec))
    log = folder / "container.log"
    pod = Pod(pod_id, 0, log, p, containerd)
    started = subprocess.run(containerd.command("run", "-d", "--config", str(folder / "config.json"),
                                                "--log-uri", f"file://{log}", pod_id),
                             capture_output=True, text=True, timeout=120, check=False)
    if started.returncode != 0:
        stop(pod, folder)
        raise Disagreement(f"the container did not start: {started.stderr.strip()}")
    listing = containerd.ctr("tasks", "ls", step="ctr tasks ls").stdout.decode().splitlines()
    pod.pid = int(next(line.split()[1] for line in listing if line.split()[:1] == [pod_id]))
    return pod


def _image_spec(containerd: Containerd, image: str, pod_id: str) -> dict:
    """containerd's own runtime spec for the image (its ENV, WORKDIR, USER; default mounts and
    capabilities; RuntimeDefault seccomp), from a container created and removed at once."""
    containerd.ctr("containers", "create", "--seccomp", image, pod_id, step="ctr containers create")
    try:
        return json.loads(containerd.ctr("containers", "info", "--spec", pod_id, step="ctr containers info").stdout)
    finally:
        containerd.ctr("containers", "rm", pod_id, step="ctr containers rm", check=False)


def _image_config(containerd: Containerd, image: str) -> dict:
    """The image's config (ENTRYPOINT, CMD), read from containerd's content store."""
    listing = containerd.ctr("images", "ls", f"name=={image}", step="ctr images ls").stdout.decode().splitlines()
    digest = listing[1].split()[2]
    manifest = json.loads(containerd.ctr("content", "get", digest, step="ctr content get").stdout)
    if "manifests" in manifest:                                  # an index: the linux/amd64 manifest
        entry = next(m for m in manifest["manifests"]
                     if m.get("platform", {}).get("architecture") in ("amd64", None))
        manifest = json.loads(containerd.ctr("content", "get", entry["digest"], step="ctr content get").stdout)
    return json.loads(containerd.ctr("content", "get", manifest["config"]["digest"],
                                     step="ctr content get").stdout).get("config") or {}


def _mount(volume: Volume, folder: Path, gid: int) -> dict:
    options = ["ro" if volume.read_only else "rw", "nosuid", "nodev"]
    if volume.kind == "emptyDir" and volume.medium == "Memory":
        return {"destination": volume.mount_path, "type": "tmpfs", "source": "tmpfs",
                "options": [*options, "mode=1777"]}
    source = folder / "volumes" / volume.name
    source.mkdir(parents=True)
    if volume.kind == "emptyDir":
        source.chmod(0o777)          # the kubelet makes an emptyDir 0777
    else:
        for key, data in volume.files.items():
            (source / key).write_bytes(data)
            (source / key).chmod(0o644)
        source.chmod(0o755)
    return {"destination": volume.mount_path, "type": "bind", "source": str(source), "options": ["rbind", *options]}


def stop(pod: Pod, folder: Path | None = None) -> None:
    """Kill what is left, remove task and container, unmount the root file system."""
    pod.containerd.stop(pod.id, grace=0)
    folder = folder or pod.log.parent
    pod.containerd.ctr("images", "unmount", "--rm", str(folder / "rootfs"), step="ctr images unmount", check=False)


def exit_code(pod: Pod) -> int | None:
    """Remove the stopped task; its exit code (ctr only prints a non-zero one)."""
    proc = subprocess.run(pod.containerd.command("tasks", "rm", pod.id), capture_output=True, text=True,
                          check=False)
    found = re.search(r"exit code (\d+)", proc.stderr)
    return int(found.group(1)) if found else (0 if proc.returncode == 0 else None)


# --- the contract --------------------------------------------------------------------------------

@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)


def check(objects: list[dict], containerd: Containerd, workdir: Path, *, predict_body: list,
          predictions: list) -> Report:
    """Run the pod of ``objects`` as the manifest says and list every way the image disagrees."""
    report = Report()
    try:
        p = plan(objects)
        pod = start(p, containerd, workdir)
    except Disagreement as exc:
        report.problems.append(str(exc))
        return report
    try:
        _check_running(pod, report, predict_body, predictions)
    except Disagreement as exc:
        report.problems.append(str(exc))
    finally:
        stop(pod)
    return report


def _check_running(pod: Pod, report: Report, predict_body: list, predictions: list) -> None:
    p, problems = pod.plan, report.problems
    first = p.probes[0]            # the startup probe when there is one: the kubelet waits for it
    deadline = time.monotonic() + first.bound
    answer: dict = {}
    while time.monotonic() < deadline:
        if not pod.running():
            raise Disagreement(f"the container exited before its {first.kind} passed:\n{pod.log_tail()}")
        answer = pod.http("GET", first.port, first.path, headers=first.headers, timeout=first.timeout)
        if answer.get("status") == 200:
            break
        time.sleep(0.2)
    if answer.get("status") != 200:
        raise Disagreement(f"{first.kind} GET {first.path} on port {first.port} answered "
                           f"{answer.get('status') or answer.get('error')} within its "
                           f"{first.bound:.0f} s (initialDelaySeconds + periodSeconds x failureThreshold); "
                           f"expected 200\n{pod.log_tail()}")

    status = _status(pod.pid)
    report.observed.update(uid=status["Uid"], gid=status["Gid"], groups=status["Groups"])
    uid = p.uid if p.uid is not None else status["Uid"][0]
    if status["Uid"] != [uid] * 4 or (p.gid is not None and status["Gid"] != [p.gid] * 4):
        problems.append(f"the process runs as uid {status['Uid']} gid {status['Gid']}; the manifest says "
                        f"runAsUser {p.uid}, runAsGroup {p.gid}")
    missing_groups = set(p.extra_gids) - set(status["Groups"])
    if missing_groups:
        problems.append(f"the process lacks the groups {sorted(missing_groups)} (fsGroup/supplementalGroups)")
    cmdline = Path(f"/proc/{pod.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    expected_cmd = (p.command or []) + (p.args or [])
    if p.command is not None and [a.decode() for a in cmdline] != expected_cmd:
        problems.append(f"the process runs {cmdline}; the manifest says {expected_cmd}")
    environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pod.pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    for key, value in p.env.items():
        if environ.get(key.encode()) != value.encode():
            found = environ.get(key.encode())
            if key in p.secret_keys:
                found, value = "(a secret's value)" if found else found, "(a secret's value)"
            problems.append(f"env {key}: the process has {found!r}; the manifest says {value!r}")
    report.observed["env"] = sorted(k.decode() for k in environ)

    listening = _listening(pod.pid, p.port)
    report.observed["listening"] = listening
    if not listening:
        problems.append(f"nothing listens on containerPort {p.port}")
    elif not any(addr in ("0.0.0.0", "::") for addr in listening):
        problems.append(f"the server listens on {listening} port {p.port}; the kubelet probes the pod IP, so it "
                        "must listen on all addresses")

    _check_writes(pod, report)

    for probe in p.probes:
        answer = pod.http("GET", probe.port, probe.path, headers=probe.headers, timeout=probe.timeout)
        report.observed[probe.kind] = answer.get("status")
        if answer.get("status") != 200:
            problems.append(f"{probe.kind} GET {probe.path} on port {probe.port} answered "
                            f"{answer.get('status') or answer.get('error')}; expected 200")

    answer = pod.http("POST", p.port, "/predict", body=json.dumps(predict_body).encode(), timeout=60)
    got = json.loads(answer["body"]).get("predictions") if answer.get("status") == 200 else None
    if got != predictions:
        problems.append(f"POST /predict with the recorded examples answered {answer.get('status')} "
                        f"{(answer.get('body') or answer.get('error') or '')[:300]}; expected the recorded "
                        f"predictions {predictions}")

    _check_admin(pod, report)

    # SIGTERM, as the kubelet sends it; the pod is killed when terminationGracePeriodSeconds have passed
    pod.containerd.ctr("tasks", "kill", "-s", "SIGTERM", pod.id, step="ctr tasks kill")
    deadline = time.monotonic() + p.grace
    while pod.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if pod.running():
        problems.append(f"the container still runs {p.grace:.0f} s (terminationGracePeriodSeconds) after SIGTERM")
    else:
        report.observed["exit_code"] = exit_code(pod)


def _check_admin(pod: Pod, report: Report) -> None:
    """The containerPort named ``admin`` (the request log for `mlops-kit monitor`, through the pod
    proxy): without the admin token it answers 401; with the token the pod's environment got
    from its Secret it lists the log's files and serves each one as the API server's proxy
    would ask."""
    from mlops_kit.serving import ADMIN_TOKEN_HEADER, ENVIRONMENT

    port = pod.plan.ports.get("admin")
    if port is None:
        return
    auth = {ADMIN_TOKEN_HEADER: pod.plan.env.get(ENVIRONMENT["admin_token"], "")}
    answer = pod.http("GET", port, "/requests")
    report.observed["admin without the token"] = answer.get("status")
    if answer.get("status") != 401:
        report.problems.append(f"GET /requests on the admin port {port} without the admin token answered "
                               f"{answer.get('status') or answer.get('error')}; expected 401")
    deadline = time.monotonic() + 10
    listing: list = []
    while time.monotonic() < deadline:   # the writer writes its queue every 0.2 s
        answer = pod.http("GET", port, "/requests", headers=auth)
        if answer.get("status") != 200:
            report.problems.append(f"GET /requests on the admin port {port} answered "
                                   f"{answer.get('status') or answer.get('error')}; expected 200")
            return
        listing = json.loads(answer["body"])
        if listing and all(entry["size"] > 0 for entry in listing):
            break
        time.sleep(0.2)
    report.observed["admin listing"] = listing
    for entry in listing:
        answer = pod.http("GET", port, f"/requests/{entry['name']}", headers=auth)
        report.observed[f"admin {entry['name']}"] = answer.get("body")
        if answer.get("status") != 200 or len(answer.get("body") or "") < entry["size"]:
            report.problems.append(f"GET /requests/{entry['name']} on the admin port {port} answered "
                                   f"{answer.get('status') or answer.get('error')}; expected 200 and "
                                   f"{entry['size']} bytes")


def _check_writes(pod: Pod, report: Report) -> None:
    """As the container's user: / refuses a write when readOnlyRootFilesystem says so; every
    writable volume takes one."""
    p = pod.plan
    targets = [("/", not p.read_only_root)] + [(v.mount_path, not v.read_only) for v in p.volumes]
    for folder, writable in targets:
        path = folder.rstrip("/") + "/.contract-write-check"
        result = pod.exec(EXEC_INTERPRETER, "-c", _WRITE, path)
        wrote = result.returncode == 0
        report.observed[f"writes {folder}"] = wrote if wrote else result.stdout.strip()
        if wrote != writable:
            said = "writable" if writable else "read-only"
            report.problems.append(f"{folder} is {said} in the manifest, but a write as the container's user "
                                   f"{'succeeded' if wrote else 'failed: ' + (result.stdout + result.stderr).strip()}")


_WRITE = """
import errno, os, sys
try:
    with open(sys.argv[1], "w") as f:
        f.write("x")
    os.unlink(sys.argv[1])
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
    sys.exit(1)
"""


def _status(pid: int) -> dict[str, list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def _listening(pid: int, port: int) -> list[str]:
    """Addresses with a listening TCP socket on ``port`` in the process's network namespace."""
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            parts = line.split()
            address, _, hex_port = parts[1].partition(":")
            if parts[3] == "0A" and int(hex_port, 16) == port:
                found.append(_address(address, width))
    return found


def _address(hex_address: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_address)
    if width == 8:
        return str(ipaddress.IPv4Address(raw[::-1]))
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))


# --- Job pods: a stage of execution.mode kubernetes --------------------------------------------

@dataclass
class StageImage:
    """What the test's stage image holds: folders of this machine (its own Python environment:
    the system, the interpreter, the venv with the kit and its dependencies), shared read-only
    instead of copied into image layers (1.5 GB of wheels per session is too much for the test
    machine), and the image's ENV. Everything else the container gets comes from the Job."""

    folders: tuple[str, ...]
    env: dict[str, str]

_JOB_POD_KEYS = {"containers", "volumes", "securityContext", "restartPolicy", "automountServiceAccountToken",
                 "enableServiceLinks"}
_JOB_CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "workingDir", "env", "resources",
                       "securityContext", "volumeMounts", "terminationMessagePolicy", "terminationMessagePath"}


@dataclass
class JobPod:
    """A Job's pod as the kubelet reads it (what :func:`run_job_pod` runs)."""

    image: str
    argv: list[str]
    working_dir: str | None
    env: dict[str, str]
    mounts: list[tuple[str, str, str, bool]]     # (claim | emptyDir, claim or volume name, mountPath, readOnly)
    read_only_root: bool
    no_new_privileges: bool
    drop_caps: list[str]
    seccomp: str | None
    memory_limit: int | None
    cpu_limit_millis: int | None
    termination_path: str


@dataclass
class JobPodEnd:
    exit_code: int
    reason: str                                  # Completed | Error | OOMKilled
    message: str
    log: str
    started: float                               # time.time() when the container started


def job_pod(job: dict) -> JobPod:
    """The pod of a rendered Job, every field read or refused (:class:`Unsupported`)."""
    pod = job["spec"]["template"]["spec"]
    _known(pod, _JOB_POD_KEYS, "Job spec.template.spec")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        raise Unsupported("a Job's pod needs restartPolicy Never or OnFailure")
    if len(pod["containers"]) != 1:
        raise Unsupported(f"{len(pod['containers'])} containers; the test kubelet runs one")
    c = pod["containers"][0]
    _known(c, _JOB_CONTAINER_KEYS, f"containers[{c.get('name')}]")
    sc, pod_sc = c.get("securityContext") or {}, pod.get("securityContext") or {}
    _known(sc, {"allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"}, "container securityContext")
    _known(pod_sc, {"seccompProfile"}, "pod securityContext")
    env = {}
    for item in c.get("env") or []:
        _known(item, {"name", "value", "valueFrom"}, f"env {item.get('name')}")
        env[item["name"]] = (_pod_field(job, item["name"], item["valueFrom"]) if "valueFrom" in item
                             else _expand(item["value"], env))
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = []
    for m in c.get("volumeMounts") or []:
        _known(m, {"name", "mountPath", "readOnly"}, f"volumeMount {m.get('name')}")
        volume = volumes[m["name"]]
        _known(volume, {"name", "persistentVolumeClaim", "emptyDir"}, f"volume {volume['name']}")
        if "persistentVolumeClaim" in volume:
            mounts.append(("claim", volume["persistentVolumeClaim"]["claimName"], m["mountPath"],
                           bool(m.get("readOnly"))))
        else:
            if volume["emptyDir"]:
                raise Unsupported(f"emptyDir options {volume['emptyDir']}")
            mounts.append(("emptyDir", volume["name"], m["mountPath"], bool(m.get("readOnly"))))
    limits = (c.get("resources") or {}).get("limits") or {}
    return JobPod(
        image=c["image"], argv=[_expand(a, env) for a in c["command"] + c.get("args", [])],
        working_dir=c.get("workingDir"), env=env, mounts=mounts,
        read_only_root=bool(sc.get("readOnlyRootFilesystem")), no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        drop_caps=list((sc.get("capabilities") or {}).get("drop") or []),
        seccomp=(pod_sc.get("seccompProfile") or {}).get("type"),
        memory_limit=_bytes(limits["memory"]) if "memory" in limits else None,
        cpu_limit_millis=_millis(limits["cpu"]) if "cpu" in limits else None,
        termination_path=c.get("terminationMessagePath", "/dev/termination-log"))


_FIELD = re.compile(r"metadata\.(annotations|labels)\['([^']+)'\]")


def _pod_field(job: dict, name: str, source: dict) -> str:
    """An env var's ``valueFrom.fieldRef`` on the pod's annotations or labels (the Job's
    template is the pod: an Indexed Job's ``JOB_COMPLETION_INDEX``)."""
    _known(source, {"fieldRef"}, f"env {name} valueFrom")
    found = _FIELD.fullmatch(source["fieldRef"].get("fieldPath", ""))
    if found is None:
        raise Unsupported(f"env {name}: fieldRef {source['fieldRef'].get('fieldPath')!r}")
    value = ((job["spec"]["template"].get("metadata") or {}).get(found.group(1)) or {}).get(found.group(2))
    if value is None:
        raise Disagreement(f"env {name}: the pod has no {found.group(1)[:-1]} {found.group(2)!r}")
    return value


def run_job_pod(p: JobPod, containerd: Containerd, workdir: Path, *, claims: dict[str, Path],
                images: dict[str, "StageImage"], timeout: float = 600) -> JobPodEnd:
    """Run the Job's pod to its end in containerd: the claims as host folders mounted where the
    manifest says, the stage image's files (``images``: reference -> folders of this machine; a
    reference not there: the image containerd holds, its root file system and ENV), command,
    env, limits and security settings from the manifest. Returns how it ended, the way the
    kubelet reports it (exit code; reason OOMKilled when the memory cgroup killed)."""
    if p.image not in images and containerd.image_digest(p.image) is None:
        raise Disagreement(f"image {p.image!r} is not present (imagePullPolicy: the test kubelet pulls nothing)")
    pod_id = f"job-{os.getpid()}-{next(_IDS)}"
    folder = workdir / pod_id
    rootfs = folder / "rootfs"
    rootfs.mkdir(parents=True)
    spec = json.loads(subprocess.run(["ctr", "oci", "spec"], capture_output=True, text=True, check=True).stdout)
    mounts = [m for m in spec["mounts"] if m["destination"] in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue",
                                                                "/sys")]
    image = images.get(p.image)
    if image is None:                      # the real image: its root file system, its ENV
        containerd.ctr("images", "mount", "--rw", p.image, str(rootfs), step="ctr images mount")
        image = StageImage(folders=(), env=dict(e.split("=", 1) for e in _image_config(containerd, p.image)
                                                 .get("Env") or []))
    else:
        for link in ("bin", "lib", "lib64", "sbin"):
            (rootfs / link).symlink_to(f"usr/{link}")
    for source in image.folders:
        mounts.append({"destination": source, "type": "bind", "source": source, "options": ["rbind", "ro"]})
    for kind, name, path, read_only in p.mounts:
        if kind == "claim":
            if name not in claims:
                raise Disagreement(f"PersistentVolumeClaim {name!r} is not bound (no such claim)")
            source = claims[name]
        else:
            source = folder / "volumes" / name
            source.mkdir(parents=True)
            source.chmod(0o777)
        mounts.append({"destination": path, "type": "bind", "source": str(source),
                       "options": ["rbind", "ro" if read_only else "rw", "nosuid", "nodev"]})
    termination = folder / "termination-log"
    termination.write_text("")
    termination.chmod(0o666)
    mounts.append({"destination": p.termination_path, "type": "bind", "source": str(termination),
                   "options": ["rbind", "rw"]})
    spec["mounts"] = mounts
    process = spec["process"]
    process.update(args=p.argv, env=[f"{k}={v}" for k, v in {**image.env, **p.env}.items()],
                   cwd=p.working_dir or "/", noNewPrivileges=p.no_new_privileges, terminal=False)
    if "ALL" in p.drop_caps:
        process["capabilities"] = {key: [] for key in process["capabilities"]}
    spec["root"] = {"path": str(rootfs), "readonly": p.read_only_root}
    spec.pop("hostname", None)
    resources = spec["linux"].setdefault("resources", {})
    if p.memory_limit:
        resources["memory"] = {"limit": p.memory_limit, "swap": p.memory_limit}
    if p.cpu_limit_millis:
        resources["cpu"] = {"quota": p.cpu_limit_millis * 100, "period": 100_000}
    cgroup = f"/mlops-kit-test/{pod_id}"
    spec["linux"]["cgroupsPath"] = cgroup
    (folder / "config.json").write_text(json.dumps(spec))
    log = folder / "container.log"
    started = time.time()
    proc = subprocess.run(containerd.command("run", "-d", "--config", str(folder / "config.json"),
                                             "--log-uri", f"file://{log}", pod_id),
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise Disagreement(f"the container did not start: {proc.stderr.strip()}")
    deadline = time.monotonic() + timeout
    while containerd.task_status(pod_id) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    oom = _oom_kills(cgroup)
    if containerd.task_status(pod_id) == "RUNNING":
        containerd.ctr("tasks", "kill", "-s", "SIGKILL", pod_id, step="ctr tasks kill", check=False)
        time.sleep(0.2)
    code = exit_code(Pod(pod_id, 0, log, None, containerd))
    containerd.ctr("containers", "rm", pod_id, step="ctr containers rm", check=False)
    if p.image not in images:
        containerd.ctr("images", "unmount", "--rm", str(rootfs), step="ctr images unmount", check=False)
    text = log.read_text(errors="replace") if log.exists() else ""
    reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
    return JobPodEnd(exit_code=code if code is not None else -1, reason=reason, message=termination.read_text(),
                     log=text, started=started)


def _oom_kills(cgroup: str) -> int:
    """How often the memory cgroup's OOM killer struck (cgroup v1 ``memory.oom_control``, v2
    ``memory.events``), read before the container is removed."""
    for path in (Path("/sys/fs/cgroup/memory") / cgroup.lstrip("/") / "memory.oom_control",
                 Path("/sys/fs/cgroup") / cgroup.lstrip("/") / "memory.events"):
        if path.exists():
            fields = dict(line.split() for line in path.read_text().splitlines() if len(line.split()) == 2)
            return int(fields.get("oom_kill", 0))
    return 0
