"""Images to the team's server, one command:  python benchmarks/remote.py

Over loopback SSH (a private sshd, tests/_sshd.py; the server's `microk8s` is the tests'
stand-in whose `ctr` is the real ctr on a private containerd, and whose registry addon is
Debian's docker-registry): the first image to the server, then a model-only rebuild + ship,
by both paths (registry through a tunnel; archive into `microk8s ctr image import`), against
the same local rebuild + import; then `git push` to serving the new model against the same
five-stage run done locally (`mlops-kit run`, both deploying with target local on this
machine). Goals: <= 2 MB sent besides the model layer; <= 1.5x the local rebuild + import;
git push <= 1.3x the local run. "sent" is the image payload the kit sends (blobs or archive bytes),
not counting SSH framing. Needs root, containerd, runc, umoci, mmdebstrap, openssh-server,
docker-registry, skopeo. Uses $MLOPS_KIT_CACHE_DIR (or the default cache) for the base.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mk-remote-bench-"))
    os.environ["MLOPS_KIT_RUNS_DIR"] = str(work / "runs")
    from _sshd import Registry, Sshd, install_microk8s
    from conftest import train_into
    from test_image_support import make_run, start_containerd, stop_containerd

    from mlops_kit import image as mk_image
    from mlops_kit.params import PackageParams, RunParams, ServerParams

    sshd = registry = None
    try:
        sock = start_containerd()
        from mlops_kit import _paths

        server_home = work / "server-home"       # the server's HOME: repository, runs, lock
        server_home.mkdir()
        sshd = Sshd(env={"HOME": str(server_home), "MLOPS_KIT_CACHE_DIR": str(_paths.cache_dir())}).start()
        registry = Registry()
        models = work / "models"
        a = train_into(models / "a", "sklearn:breast_cancer", "target")
        b = train_into(models / "b", "sklearn:breast_cancer", "target", params={"C": 0.5, "max_iter": 1000})
        quiet = lambda line: None  # noqa: E731

        def package(model, run_id, params):
            t = time.monotonic()
            record = mk_image.package(make_run(work / "runs", model, run_id), params, log=quiet)
            return record, time.monotonic() - t

        # local: build + import into this machine's containerd (its own namespace)
        local = RunParams()
        local.package = PackageParams(builder="layers", containerd_socket=str(sock), containerd_namespace="bench-local")
        _, local_first = package(a, "local-a", local)
        local_b, local_rebuild = package(b, "local-b", local)
        model_layer = local_b["layers"][-1]["size"]

        def remote(namespace_runs: str, registry_on: bool):
            install_microk8s(sshd, socket=sock, registry="enabled" if registry_on else "disabled")
            params = RunParams()
            params.package = PackageParams(builder="layers")
            params.server = ServerParams(host=sshd.url(), identity_file=str(sshd.user_key),
                                         known_hosts=str(sshd.known_hosts), registry_port=registry.port)
            first, t_first = package(a, f"{namespace_runs}-a", params)
            second, t_second = package(b, f"{namespace_runs}-b", params)
            return first, t_first, second, t_second

        mb = 1e6
        rows = [("local build + import, first image", f"{local_first:.2f} s", ""),
                ("local model-only rebuild + import", f"{local_rebuild:.2f} s", "(baseline)"),
                ("model layer", f"{model_layer / mb:.3f} MB", "")]
        for label, registry_on in (("registry via tunnel", True), ("ctr import over ssh", False)):
            first, t_first, second, t_second = remote(label.split()[0], registry_on)
            extra = second["imported"]["bytes_sent"] - model_layer
            rows += [
                (f"[{label}] first image to the server", f"{t_first:.2f} s, sent "
                 f"{first['imported']['bytes_sent'] / mb:.1f} MB", ""),
                (f"[{label}] model-only rebuild + ship", f"{t_second:.2f} s "
                 f"({t_second / local_rebuild:.2f}x local)", "<= 1.5x"),
                (f"[{label}] sent besides the model layer", f"{extra / mb:.3f} MB", "<= 2 MB"),
            ]
        local_run, pushed = _push_versus_local(sshd, sock, work, server_home)
        rows += [("local five-stage run, `mlops-kit run` to serving", f"{local_run:.1f} s", ""),
                 ("`git push` to serving on the server", f"{pushed:.1f} s ({pushed / local_run:.2f}x local)",
                  "<= 1.3x")]
        width = max(len(r[0]) for r in rows)
        for name, value, goal in rows:
            print(f"{name:<{width}}  {value}  {goal}")
        return 0
    finally:
        if registry is not None:
            registry.stop()
        if sshd is not None:
            sshd.stop_all()
        stop_containerd()
        shutil.rmtree(work, ignore_errors=True)


def _push_versus_local(sshd, sock, work: Path, server_home: Path) -> tuple[float, float]:
    """Seconds of a local five-stage run and of `git push` until the server answers."""
    import subprocess
    import urllib.request

    from _sshd import REPO, install_microk8s

    install_microk8s(sshd, socket=sock, registry="disabled")
    params = ("extends: default.yaml\nstages: [data, train, evaluate, package, deploy]\n"
              "package: {builder: layers}\ndeploy: {target: local}\n")
    project = work / "project"
    project.mkdir()
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    shutil.copytree(REPO / "parameters", project / "parameters")
    (project / "parameters" / "server.yaml").write_text(params)
    env = {**os.environ, "PYTHONPATH": str(REPO), "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.org",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.org", "MLOPS_KIT_PROJECT_DIR": str(project),
           "MLOPS_KIT_RUNS_DIR": str(work / "local-runs")}
    kit = [sys.executable, "-m", "mlops_kit.cli"]

    def run(*argv, **kw):
        return subprocess.run([str(a) for a in argv], cwd=project, env=env, check=True, capture_output=True,
                              text=True, **kw)

    t = time.monotonic()
    run(*kit, "run", "-p", "parameters/server.yaml", "--set", f"package.containerd_socket={sock}")
    local = time.monotonic() - t
    run(*kit, "undeploy", "--target", "local")
    run("git", "init", "-q", "-b", "main")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "bench")
    run(*kit, "server", "init", *sshd.args())
    t = time.monotonic()
    out = run("git", "push", "server", "main").stderr
    endpoint = next(line.split()[3] for line in out.splitlines() if "mlops-kit: endpoint" in line)
    with urllib.request.urlopen(endpoint + "/v2/health/ready", timeout=10):
        pushed = time.monotonic() - t
    server_env = {**env, "HOME": str(server_home), "PATH": f"{sshd.bin}:{os.environ['PATH']}",
                  "MLOPS_KIT_RUNS_DIR": str(server_home / "mlops-kit" / "project" / "runs")}
    subprocess.run([*kit, "undeploy", "--target", "local"], env=server_env, capture_output=True)
    return local, pushed


if __name__ == "__main__":
    sys.exit(main())
