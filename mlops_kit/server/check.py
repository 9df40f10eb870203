"""``mlops-kit server check``: is the server ready for the kit, and how to fix what is not.

Each check is ``{"name", "ok", "detail", "fix"}``; when SSH itself fails the others are
skipped (``ok`` false, detail says why). The same probes guard image shipping and pushes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import yaml

from ..errors import ServerError
from ._ssh import SSH

#: where MicroK8s keeps images (containerd's root); the home folder when it does not exist
IMAGE_DIRS = ("/var/snap/microk8s/common", "$HOME")
MIN_FREE_GB = 2.0
ADDONS = ("dns", "registry")


def _result(name: str, ok: bool, detail: str, fix: str | None = None) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail, "fix": None if ok else fix}


def probe_ssh(ssh: SSH) -> dict:
    """Key authentication with a verified host key; detail names the remote user."""
    proc = ssh.run("id -un", step="id -un", timeout=60)
    user = proc.stdout.strip()
    return {"user": user, "detail": f"{ssh.target.url}: key authentication as {user}, host key verified "
                                    f"against {ssh.known_hosts}"}


def microk8s_status(ssh: SSH) -> dict:
    """``{"installed", "running", "version", "addons": {name: status}, "denied", "output"}``."""
    proc = ssh.run("command -v microk8s >/dev/null || { echo MLOPS_KIT_NO_MICROK8S; exit 0; }; "
                   "microk8s status --format yaml 2>&1; echo \"MLOPS_KIT_STATUS=$?\"; microk8s version 2>&1",
                   check=False, step="microk8s status", timeout=120)
    out = proc.stdout
    if "MLOPS_KIT_NO_MICROK8S" in out:
        return {"installed": False, "running": False, "version": None, "addons": {}, "denied": False, "output": ""}
    denied = "insufficient permissions" in out.lower() or "permission denied" in out.lower()
    status_text, _, rest = out.partition("MLOPS_KIT_STATUS=")
    version = re.search(r"v\d+\.\d+\.\d+\S*", rest)
    running, addons = False, {}
    try:
        data = yaml.safe_load(status_text) if not denied else None
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        running = bool((data.get("microk8s") or {}).get("running"))
        for addon in data.get("addons") or []:
            if isinstance(addon, dict) and "name" in addon:
                addons[addon["name"]] = addon.get("status")
    return {"installed": True, "running": running, "version": version.group(0) if version else None,
            "addons": addons, "denied": denied, "output": status_text.strip()[-500:]}


def free_bytes(ssh: SSH) -> tuple[int, str]:
    """Free bytes where images land (MicroK8s's folder, else the home folder) and that folder."""
    script = "; ".join(f'if [ -d "{d}" ]; then df -Pk "{d}" | tail -1; echo "{d}"; exit 0; fi' for d in IMAGE_DIRS)
    proc = ssh.run(script, step="df", timeout=60)
    lines = proc.stdout.strip().splitlines()
    fields = lines[0].split()
    folder = lines[1] if len(lines) > 1 else fields[-1]
    return int(fields[3]) * 1024, folder


def require_free(ssh: SSH, needed: int, *, what: str) -> None:
    """Refuse (before any upload) when the server has less than ``needed`` bytes free."""
    free, folder = free_bytes(ssh)
    if free < needed:
        raise ServerError(f"The server must have {needed / 1e6:.0f} MB free in {folder} for {what}. Got "
                          f"{free / 1e6:.0f} MB free instead; nothing was uploaded.", host=ssh.target.url,
                          check="disk", fix=f"free space on the server (`df -h {folder}`; `microk8s ctr images rm` "
                          "old mlops-kit images)")


def run_checks(ssh: SSH, *, min_free_gb: float = MIN_FREE_GB, log: Callable[[str], None] | None = None) -> list[dict]:
    """All checks, in order; never raises for a failed check."""
    checks: list[dict] = []

    def add(result: dict) -> None:
        checks.append(result)
        if log:
            log(f"{'ok  ' if result['ok'] else 'FAIL'} {result['name']}: {result['detail']}"
                + (f"\n     fix: {result['fix']}" if result["fix"] else ""))

    session = ssh.multiplexed()        # one connection for all the probes
    try:
        session.__enter__()
        found = probe_ssh(ssh)
    except ServerError as exc:
        session.__exit__(None, None, None)
        add(_result("ssh", False, exc.message, exc.fix))
        for name in ("microk8s", "group", "containerd", "disk", "python"):
            add(_result(name, False, "skipped: SSH failed", "fix the ssh check first"))
        return checks
    try:
        _remote_checks(ssh, found["user"], min_free_gb, add, found["detail"])
    finally:
        session.__exit__(None, None, None)
    return checks


def _remote_checks(ssh: SSH, user: str, min_free_gb: float, add: Callable[[dict], None], ssh_detail: str) -> None:
    found = {"detail": ssh_detail}
    add(_result("ssh", True, found["detail"]))

    status = microk8s_status(ssh)
    if not status["installed"]:
        add(_result("microk8s", False, "no `microk8s` command on the server's PATH",
                    "sudo snap install microk8s --classic && microk8s status --wait-ready"))
    elif status["denied"]:
        add(_result("microk8s", False, f"`microk8s status` refused {user}: {status['output'][:200]}",
                    f"sudo usermod -a -G microk8s {user}  (then log in again)"))
    elif not status["running"]:
        add(_result("microk8s", False, f"MicroK8s {status['version'] or ''} is not running".replace("  ", " "),
                    "sudo microk8s start && microk8s status --wait-ready"))
    else:
        missing = [a for a in ADDONS if status["addons"].get(a) != "enabled"]
        detail = (f"MicroK8s {status['version']} running; addons " +
                  ", ".join(f"{a} {status['addons'].get(a, 'absent')}" for a in ADDONS))
        add(_result("microk8s", not missing, detail, f"microk8s enable {' '.join(missing)}"))

    groups = ssh.run("id -Gn", step="id -Gn").stdout.split()
    in_group = user == "root" or "microk8s" in groups
    add(_result("group", in_group and not status["denied"],
                f"{user} is root" if user == "root" else f"{user} is {'' if in_group else 'not '}in the microk8s group",
                f"sudo usermod -a -G microk8s {user}  (then log in again, or `newgrp microk8s`)"))

    if not status["installed"]:
        add(_result("containerd", False, "skipped: no MicroK8s", "install MicroK8s first"))
    else:
        proc = ssh.run("microk8s ctr version 2>&1", check=False, step="microk8s ctr version")
        ok = proc.returncode == 0
        server_version = re.search(r"Server:\s*\n\s*Version:\s*(\S+)", proc.stdout)
        detail = (f"containerd {server_version.group(1) if server_version else ''} answers through `microk8s ctr`"
                  if ok else f"`microk8s ctr version` failed: {proc.stdout.strip()[-300:]}")
        fix = (f"sudo usermod -a -G microk8s {user}" if "permission" in proc.stdout.lower() else
               "sudo microk8s start && microk8s status --wait-ready")
        add(_result("containerd", ok, detail, fix))

    free, folder = free_bytes(ssh)
    add(_result("disk", free >= min_free_gb * 1e9, f"{free / 1e9:.1f} GB free in {folder} (images need "
                f"{min_free_gb:g} GB)", f"free space on the server: `df -h {folder}`"))

    proc = ssh.run("python3 --version 2>&1; mlops-kit --version 2>&1", check=False, step="python3 --version")
    python = re.search(r"Python \d+\.\d+\.\d+", proc.stdout)
    kit = re.search(r"version (\S+)", proc.stdout)
    detail = f"{python.group(0) if python else 'no python3'}; " + (f"mlops-kit {kit.group(1)}" if kit else
                                                                   "no `mlops-kit` on PATH")
    add(_result("python", bool(python and kit), detail,
                "install Python 3.11+ and the kit on the server (`pip install mlops-kit`, on the PATH of "
                "non-interactive SSH sessions) for `git push` deploys"))
