"""04_package: build context, builders, base image, containerd import - real components.

The main tests build a real image from a real model folder with the layers builder (the base
is built once per session, or taken from $MLOPS_KIT_CACHE_DIR), import it into a private
containerd, run it and compare its predictions with in-process ones."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import tarfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from _real import need_commands
from test_image_support import make_run, need_layers_builder, start_containerd

from mlops_kit import image as mk_image
from mlops_kit import model_io
from mlops_kit.errors import BuilderNotFound, ContainerdError, GateFailed, VersionMismatch
from mlops_kit.image import _oci
from mlops_kit.image._runner import Runner
from mlops_kit.params import PackageParams, RunParams

pytestmark = pytest.mark.containerd


@pytest.fixture(scope="session")
def socket_path(image_env):
    return start_containerd()


def _params(socket_path, **package) -> RunParams:
    params = RunParams()
    params.package = PackageParams(containerd_socket=str(socket_path), **package)
    return params


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_dir, socket_path):
    """One real image of the default model, imported into the private containerd."""
    need_layers_builder()
    run = make_run(tmp_path_factory.mktemp("runs"), model_dir, "20250101-000000-abcd")
    record = mk_image.package(run, _params(socket_path, builder="layers", runtime="skops"))
    return run, record


@pytest.fixture(scope="module")
def lean_built(tmp_path_factory, model_dir, socket_path):
    """The same model compiled to ONNX: the lean image (no scikit-learn, scipy or pandas)."""
    need_layers_builder()
    run = make_run(tmp_path_factory.mktemp("runs"), model_dir, "20250101-000000-0111")
    record = mk_image.package(run, _params(socket_path, builder="layers", runtime="onnx"))
    return run, record


def ctr(socket_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "-a", str(socket_path), "-n", "k8s.io", *args], capture_output=True, text=True)


# --- the record and the context -------------------------------------------------------------

def test_image_record_and_tag(built, socket_path):
    run, record = built
    on_disk = json.loads((run / "artifacts" / "image.json").read_text())
    assert on_disk == record
    assert re.fullmatch(r"docker\.io/mlops-kit/model:20250101-000000-abcd-[0-9a-f]{12}", record["ref"])
    assert not record["ref"].endswith(":latest")
    assert record["builder"] == "layers"
    assert [l["base"] for l in record["layers"]] == [True, True, False, False]
    assert record["layers"][-1]["created_by"].startswith("COPY model/")
    assert record["size"]["compressed"] == sum(l["size"] for l in record["layers"])
    assert record["size"]["unpacked"] > record["size"]["compressed"]
    assert set(record["seconds"]) == {"context", "build", "import", "total"}
    # containerd holds the digest the record names (checked by package() too)
    listing = ctr(socket_path, "images", "ls", f"name=={record['ref']}").stdout
    assert record["digest"] in listing
    # the base stays tagged, so containerd never collects its layers
    assert "localhost/mlops-kit-base:" in ctr(socket_path, "images", "ls", "-q").stdout


def test_context_is_buildable_by_hand(built):
    run, record = built
    context = run / "artifacts" / "context"
    text = (context / "Containerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in text and "COPY model/ /app/model/" in text
    assert text.index("COPY app/") < text.index("COPY model/")          # the model last
    assert "USER 10001:10001" in text and ":latest" not in text
    pins = dict(line.split("==") for line in (context / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for name in ("scikit-learn", "numpy", "scipy", "skops", "starlette", "uvicorn"):
        assert pins[name] == metadata.version(name)
    assert "pandas" not in pins and "jupyterlab" not in pins and "pytest" not in pins
    app = sorted(p.relative_to(context / "app").as_posix() for p in (context / "app").rglob("*.py"))
    assert "mlops_kit/serving/__main__.py" in app and "mlops_kit/model_io.py" in app
    assert not any(p.startswith(("mlops_kit/image", "mlops_kit/cli", "mlops_kit/train")) for p in app)
    assert sorted(p.name for p in (context / "model").iterdir()) == sorted(mk_image._context.MODEL_FILES)


def test_image_has_no_tests_and_ships_pyc(built, image_env):
    run, record = built
    layout = Path(record["layout"])
    site = next(l for l in record["layers"] if l["created_by"].startswith("pip"))
    with tarfile.open(fileobj=gzip.open(_oci.blob_path(layout, site["digest"]))) as tar:
        names = tar.getnames()
    assert not [n for n in names if "/tests/" in n]
    assert any(n.endswith(".cpython-311.pyc") and "/sklearn/" in n for n in names)
    assert not any(n.startswith(("usr/bin/pip", "usr/local/bin")) for n in names)


# --- the image runs -------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, socket_path, name: str, log: Path) -> None:
    for _ in range(1200):
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if "RUNNING" not in ctr(socket_path, "tasks", "ls").stdout:
            pytest.fail(f"container exited:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"not ready:\n{log.read_text()}")


def _run_container(socket_path, record, name, port, log) -> None:
    started = subprocess.run(["ctr", "-a", str(socket_path), "-n", "k8s.io", "run", "-d", "--net-host",
                              "--read-only", "--log-uri", f"file://{log}", "--env", f"PORT={port}", record["ref"],
                              name, "python3", "-m", "mlops_kit.serving", "--model-dir", "/app/model", "--host",
                              "127.0.0.1"], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr


def _remove_container(socket_path, name) -> None:
    ctr(socket_path, "tasks", "kill", "-s", "SIGKILL", name)
    time.sleep(0.2)
    ctr(socket_path, "tasks", "rm", "-f", name)
    ctr(socket_path, "containers", "rm", name)


def test_container_answers_like_in_process(built, socket_path, model_dir, tmp_path):
    run, record = built
    port, name, log = _free_port(), f"t-{os.getpid()}-run", tmp_path / "c.log"
    _run_container(socket_path, record, name, port, log)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, socket_path, name, log)
        examples = json.loads((model_dir / "examples.json").read_text())
        frame = pd.read_parquet(model_dir / "test.parquet")
        schema = json.loads((model_dir / "schema.json").read_text())
        features = [f["name"] for f in schema["features"]]
        records = frame[features].head(40).to_dict(orient="records")
        req = urllib.request.Request(url + "/predict", data=json.dumps(records).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        expected = model_io.load_model(model_dir).predict(frame[features].head(40))
        assert answer["predictions"] == expected.tolist()
        req = urllib.request.Request(url + "/predict", data=json.dumps(examples["records"]).encode(),
                                     headers={"Content-Type": "application/json"})
        assert json.loads(urllib.request.urlopen(req).read())["predictions"] == examples["predictions"]
        # non-root
        pid = next(l.split()[1] for l in ctr(socket_path, "tasks", "ls").stdout.splitlines() if l.startswith(name))
        uid_line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("Uid:"))
        assert uid_line.split()[1] == "10001"
        # SIGTERM stops it (no SIGKILL needed)
        ctr(socket_path, "tasks", "kill", "-s", "SIGTERM", name)
        for _ in range(200):
            if "RUNNING" not in ctr(socket_path, "tasks", "ls").stdout:
                break
            time.sleep(0.05)
        assert "RUNNING" not in ctr(socket_path, "tasks", "ls").stdout
    finally:
        _remove_container(socket_path, name)


def test_lean_image_holds_no_scikit_learn_and_answers_like_in_process(lean_built, built, socket_path, model_dir,
                                                                       tmp_path):
    """The ONNX image: onnxruntime + numpy + the web stack, its own (trimmed) base; run for real."""
    run, record = lean_built
    assert record["runtime"] == "onnx"
    pins = record["requirements"]
    assert "onnxruntime" in pins and "numpy" in pins and "starlette" in pins
    assert not {"scikit-learn", "scipy", "pandas", "skops", "joblib"} & set(pins)
    assert record["base"]["key"] != built[1]["base"]["key"]
    model_layer = sorted(p.name for p in (run / "artifacts" / "context" / "model").iterdir())
    assert model_layer == sorted(mk_image._context.ONNX_MODEL_FILES) and "model.skops" not in model_layer
    layout = Path(record["layout"])
    site = next(l for l in record["layers"] if l["created_by"].startswith("pip"))
    with tarfile.open(fileobj=gzip.open(_oci.blob_path(layout, site["digest"]))) as tar:
        names = tar.getnames()
    assert any("/onnxruntime/capi/" in n for n in names)
    assert not [n for n in names if re.search(r"/(sklearn|scipy|pandas)/", n)]
    assert record["size"]["compressed"] < built[1]["size"]["compressed"]
    print(f"lean image: {record['size']['compressed'] / 2**20:.1f} MiB compressed "
          f"(skops image {built[1]['size']['compressed'] / 2**20:.1f} MiB)")

    port, name, log = _free_port(), f"t-{os.getpid()}-lean", tmp_path / "c.log"
    started = time.monotonic()
    _run_container(socket_path, record, name, port, log)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, socket_path, name, log)
        print(f"lean image: start to ready {time.monotonic() - started:.2f} s")
        frame = pd.read_parquet(model_dir / "test.parquet")
        features = [f["name"] for f in json.loads((model_dir / "schema.json").read_text())["features"]]
        records = frame[features].to_dict(orient="records")
        req = urllib.request.Request(url + "/predict", data=json.dumps(records).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        model = model_io.load_model(model_dir)
        assert answer["predictions"] == model.predict(frame[features]).tolist()
        assert max(abs(a - b) for got, want in zip(answer["probabilities"], model.predict_proba(frame[features]))
                   for a, b in zip(got, want)) <= 1e-5
        with urllib.request.urlopen(url + "/v2/models/logistic_regression", timeout=10) as resp:
            assert json.loads(resp.read())["platform"] == "onnxruntime"
    finally:
        _remove_container(socket_path, name)


def test_model_only_rebuild_reuses_base_layers(built, tmp_path, socket_path, mixed_model_dir):
    """Another model: the base and app layers are the same blobs, only the model layer is new."""
    run, first = built
    other = make_run(tmp_path, mixed_model_dir, "20250101-000000-beef")
    second = mk_image.package(other, _params(socket_path, builder="layers", runtime="skops"))
    assert [l["digest"] for l in second["layers"][:2]] == [l["digest"] for l in first["layers"][:2]]
    same_app = (mk_image._context.content_digest(run / "artifacts/context/app")
                == mk_image._context.content_digest(other / "artifacts/context/app"))
    assert same_app == (second["layers"][2]["digest"] == first["layers"][2]["digest"])
    assert second["layers"][3]["digest"] != first["layers"][3]["digest"]
    assert second["digest"] != first["digest"] and second["ref"] != first["ref"]
    assert second["base"]["key"] == first["base"]["key"]
    # the same content again: the same tag and the same digest (content-addressed)
    again = mk_image.package(other, _params(socket_path, builder="layers", runtime="skops"))
    assert (again["ref"], again["digest"]) == (second["ref"], second["digest"])


def test_no_import_builds_only(model_dir, tmp_path, image_env):
    need_layers_builder()
    run = make_run(tmp_path, model_dir, "r-no-import")
    params = RunParams()
    params.package.builder = "layers"
    params.package.containerd_socket = str(tmp_path / "absent.sock")     # never contacted
    record = mk_image.package(run, params, import_into_containerd=False)
    assert record["imported"] is None and Path(record["layout"], "index.json").is_file()


# --- failure paths ------------------------------------------------------------------------------

def test_version_mismatch_is_refused_before_the_build(model_dir, tmp_path):
    run = make_run(tmp_path, model_dir, "r-old-sklearn")
    card_path = run / "artifacts" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["versions"]["scikit-learn"] = "1.5.0"
    card_path.write_text(json.dumps(card))
    params = RunParams()
    params.package.runtime = "skops"
    with pytest.raises(VersionMismatch) as err:
        mk_image.package(run, params, runner=_NoCommands())
    text = str(err.value)
    assert "scikit-learn must be 1.5.0" in text and metadata.version("scikit-learn") in text
    assert "pip install scikit-learn==1.5.0" in text and "mlops-kit base build" in text
    assert not (run / "artifacts" / "context").exists()


def test_failed_gate_is_not_packaged(model_dir, tmp_path):
    from mlops_kit import artifacts, evaluate

    run = make_run(tmp_path, model_dir, "r-gate")
    recorded = artifacts.METRICS.load(run)            # the evaluate stage's own producer, a stricter gate
    gate = evaluate.check_gate(recorded.metrics, {"accuracy": 0.9999}, recorded.task)
    evaluate.save_metrics(run / "artifacts", recorded.task, recorded.metrics, gate,
                          data_fingerprint=recorded.data_fingerprint, model=recorded.model)
    with pytest.raises(GateFailed, match=r"accuracy 0\.\d{4} misses >= 0\.9999"):
        mk_image.package(run, RunParams(), runner=_NoCommands())


class _NoCommands(Runner):
    """A machine without any builder (the one boundary unit tests fake)."""

    def which(self, name):
        return None

    def run(self, argv, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError(f"ran {argv}")


def test_builder_registry_errors():
    with pytest.raises(BuilderNotFound, match="no builder named 'kaniko'"):
        mk_image.select_builder("kaniko", runner=_NoCommands())
    with pytest.raises(BuilderNotFound) as err:
        mk_image.select_builder("auto", runner=_NoCommands())
    text = str(err.value)
    assert "No image builder works" in text and "install one of" in text
    assert all(name in text for name in ("layers", "buildah", "podman", "docker", "nerdctl"))
    with pytest.raises(BuilderNotFound, match="'podman' cannot work on this machine: podman is not installed"):
        mk_image.select_builder("podman", runner=_NoCommands())
    with pytest.raises(BuilderNotFound, match="local base only"):
        mk_image.select_builder("layers", base_image="python:3.11-slim", runner=Runner())


def test_builder_missing_via_cli(model_dir, _isolated_runs, monkeypatch):
    from click.testing import CliRunner

    from mlops_kit.cli import main

    make_run(_isolated_runs, model_dir, "r-cli", params={"package": {"builder": "nerdctl"}})
    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(main, ["build", "r-cli", "--no-import"])
    assert isinstance(result.exception, BuilderNotFound)
    assert "nerdctl" in str(result.exception) and "install it" in str(result.exception)


def test_import_refused_bad_socket(built, tmp_path):
    run, record = built
    built_image = mk_image.BuiltImage(ref=record["ref"], builder="layers", layout=Path(record["layout"]))
    with pytest.raises(ContainerdError) as err:
        mk_image.import_image(built_image, mk_image.Containerd(tmp_path / "nope.sock"))
    assert "is containerd running" in str(err.value) and "package.containerd_socket" in str(err.value)


def test_import_refused_permission_hint(built):
    """Root passes every permission check here, so the refusal is faked at the command boundary."""
    class Denied(Runner):
        def run(self, argv, **kwargs):
            return subprocess.CompletedProcess(argv, 1, b"", b"ctr: failed to dial \"/run/x.sock\": "
                                               b"connection error: dial unix /run/x.sock: connect: permission denied")
    run, record = built
    built_image = mk_image.BuiltImage(ref=record["ref"], builder="layers", layout=Path(record["layout"]))
    with pytest.raises(ContainerdError) as err:
        mk_image.import_image(built_image, mk_image.Containerd("/run/x.sock", runner=Denied()))
    assert "usermod -a -G" in str(err.value) and "sudo" in str(err.value)


# --- other builders, the CLI and the notebook ------------------------------------------------------

@pytest.mark.slow
def test_buildah_builds_the_containerfile_on_the_local_base(built, tmp_path, socket_path, monkeypatch):
    need_commands("buildah")
    run, first = built
    # No state left on this machine may hide a failure: buildah gets an empty storage of its
    # own, and the base cache sits under a dot-folder, as ~/.cache/mlops-kit does on a fresh
    # machine (buildah once named the pulled base after that path: "invalid reference format").
    storage = tmp_path / "containers"
    (tmp_path / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{storage}/root"\nrunroot = "{storage}/run"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(tmp_path / "storage.conf"))
    dotted = tmp_path / ".cache" / "mlops-kit"
    (dotted / "image").mkdir(parents=True)
    for layout in Path(os.environ["MLOPS_KIT_CACHE_DIR"], "image").glob("layout-*"):
        (dotted / "image" / layout.name).symlink_to(layout.resolve(), target_is_directory=True)
    monkeypatch.setenv("MLOPS_KIT_CACHE_DIR", str(dotted))
    other = make_run(tmp_path, Path(run / "artifacts"), "r-buildah")
    record = mk_image.package(other, _params(socket_path, builder="buildah"))
    assert record["builder"] == "buildah" and record["archive"]
    assert record["digest"] in ctr(socket_path, "images", "ls", f"name=={record['ref']}").stdout
    # buildah recompresses the base layers (other blob digests), but adds its own on top of them
    assert len(record["layers"]) >= len(first["layers"])


def test_cli_build_reads_run_params(model_dir, _isolated_runs, socket_path):
    from click.testing import CliRunner

    from mlops_kit.cli import main

    need_layers_builder()
    make_run(_isolated_runs, model_dir, "r-cli-ok",
             params={"package": {"builder": "layers", "containerd_socket": str(socket_path), "image": "team/churn"}})
    result = CliRunner().invoke(main, ["build", "r-cli-ok", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads((_isolated_runs / "r-cli-ok" / "artifacts" / "image.json").read_text())
    assert record["ref"].startswith("docker.io/team/churn:r-cli-ok-") and record["imported"]


def test_package_notebook(model_dir, tmp_path, socket_path):
    import papermill as pm

    need_layers_builder()
    run = make_run(tmp_path, model_dir, "r-notebook")
    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "04_package.ipynb"
    pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"run_dir": str(run), "containerd_socket": str(socket_path), "builder": "layers"})
    record = json.loads((run / "artifacts" / "image.json").read_text())
    assert record["ref"].startswith("docker.io/mlops-kit/model:r-notebook-")


def test_notebook_is_committed_clean_with_a_parameters_cell():
    import nbformat

    nb = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / "04_package.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in ["run_dir", *PackageParams.model_fields]:
        assert re.search(rf"^{name} = ", params[0].source, re.M), name
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
