"""The kit's errors: each kind keeps the facts it names as attributes, and refuses others."""

from __future__ import annotations

import pytest

from mlops_kit import errors


def test_fields_become_attributes_and_missing_ones_are_none():
    err = errors.DataError("Column 'x' is empty.", column="x", hint="drop it")
    assert (err.column, err.source, err.hint) == ("x", None, "drop it")
    assert str(err) == "Column 'x' is empty.\nHint: drop it"
    err = errors.BuildError("build failed", step="base", command=["buildah", "from"], output="no space")
    assert (err.step, err.command, err.output) == ("base", ["buildah", "from"], "no space")


def test_a_field_the_kind_does_not_carry_is_a_type_error():
    with pytest.raises(TypeError, match="'colum'"):
        errors.DataError("x", colum="y")
    with pytest.raises(TypeError, match="'path'"):
        errors.MlopsKitError("x", path="y")


def test_server_error_shows_its_fix_as_the_hint():
    err = errors.ServerError("no microk8s", host="ssh://u@h:22", check="microk8s", fix="snap install microk8s")
    assert err.fix == err.hint == "snap install microk8s" and err.output is None
    assert str(err).endswith("Hint: snap install microk8s")


def test_deploy_errors_append_the_log_and_k8s_errors_keep_theirs_apart():
    err = errors.DeployError("not ready", log="line 1\nline 2\n", status=503)
    assert err.status == 503 and err.log == "line 1\nline 2\n"
    assert str(err).endswith("--- server log (last lines) ---\nline 1\nline 2")
    err = errors.K8sDeployError("crashing", reason="CrashLoopBackOff", kind="Deployment", name="m",
                                logs="boom", status=None)
    assert err.reason is errors.FailureReason.CRASH_LOOP_BACK_OFF and err.raw_reason == "CrashLoopBackOff"
    assert (err.kind, err.namespace, err.name, err.log, err.logs) == ("Deployment", None, "m", "boom", "boom")
    assert "boom" not in str(err)
    assert errors.K8sDeployError("?", reason="Weird").reason is errors.FailureReason.OTHER
    manifest = errors.ManifestError([("a.yaml", "Deployment/m", "spec.replicas", "must be >= 0")], version="1.33.0")
    assert manifest.reason is errors.FailureReason.INVALID and "1 manifest problem" in str(manifest)
