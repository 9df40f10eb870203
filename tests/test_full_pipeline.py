"""All five stages through `mlops-kit run`: data, train, evaluate, package (a real image
into a private containerd) and deploy (target local: the image runs and answers)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from test_image_support import image_cache, need_layers_builder, start_containerd
from test_pipeline import cli, runs_in

pytestmark = pytest.mark.containerd


def test_five_stages_from_data_to_a_serving_container(_isolated_runs, monkeypatch):
    need_layers_builder()
    socket = start_containerd()
    monkeypatch.setenv("MLOPS_KIT_CACHE_DIR", str(image_cache()))
    args = ("--set", "stages=[data, train, evaluate, package, deploy]", "--set", "package.builder=layers",
            "--set", f"package.containerd_socket={socket}")
    result = cli("run", *args)
    try:
        assert result.returncode == 0, result.stderr
        (record,) = runs_in(_isolated_runs)
        assert [info["status"] for info in record["stages"].values()] == ["succeeded"] * 5
        folder = _isolated_runs / record["id"]
        image = json.loads((folder / "artifacts" / "image.json").read_text())
        release = json.loads((folder / "artifacts" / "release.json").read_text())
        compiled = json.loads((folder / "artifacts" / "onnx.json").read_text())
        print(f"image runtime {image.get('runtime')}; ONNX passed {compiled['passed']} ({compiled.get('reason')})")
        # the package step records the compiled model's sha256 in the run (serving from the run checks it)
        assert record["stages"]["package"]["onnx"] == (
            {"file": "model.onnx", "sha256": compiled["sha256"]} if compiled["passed"] else None)
        assert image["ref"].endswith(image["ref"].rsplit(":", 1)[1]) and ":latest" not in image["ref"]
        assert record["id"] in image["ref"]
        for name in ("04_package", "05_deploy"):
            assert (folder / "notebooks" / f"{name}.ipynb").exists()
            assert (folder / "reports" / f"{name}.html").exists()
        examples = json.loads((folder / "artifacts" / "examples.json").read_text())
        endpoint = release.get("endpoint") or release.get("url")
        assert endpoint, release
        request = urllib.request.Request(endpoint.rstrip("/") + "/predict",
                                         data=json.dumps(examples["records"]).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert answer["predictions"] == examples["predictions"]
        # nothing changed: the three stages are reused; package and deploy act outside the run
        # folder (containerd, the running server), so they always execute
        again = cli("run", *args, "--explain")
        assert again.returncode == 0 and again.stdout.count("reuse from run") == 3, again.stdout
        assert again.stdout.count("always executed") == 2
    finally:
        cli("undeploy", "--set", f"package.containerd_socket={socket}")
