"""``parse_foreign_kubeconfig`` at its edges (the mutation target ``kubeconfig``,
docs/mutation.md): each bound exactly and just past it, each accepted form next to the refused
one closest to it, each credential combination. test_kubeconfig_security.py has the attacks."""

from __future__ import annotations

import copy

import pytest
import yaml

from mlops_kit.deploy.k8s import parse_foreign_kubeconfig
from mlops_kit.errors import UnsafeKubeconfig

from test_kubeconfig_security import B64, microk8s_config, parse

pytestmark = pytest.mark.security


def refused(document) -> UnsafeKubeconfig:
    with pytest.raises(UnsafeKubeconfig) as err:
        parse(document)
    return err.value


def changed(change) -> dict:
    document = copy.deepcopy(microk8s_config())
    change(document)
    return document


def test_the_size_bound_is_one_mebibyte_inclusive():
    from mlops_kit.kube import _kubeconfig

    assert _kubeconfig.MAX_KUBECONFIG_BYTES == 1024 * 1024
    text = yaml.safe_dump(microk8s_config()) + "#"
    text += "x" * (_kubeconfig.MAX_KUBECONFIG_BYTES - len(text.encode()) - 1) + "\n"
    assert len(text.encode()) == _kubeconfig.MAX_KUBECONFIG_BYTES
    assert parse(text).server == "https://10.0.0.5:16443"
    err = refused(text + "#")
    assert err.field == "(the document)" and f"more than {_kubeconfig.MAX_KUBECONFIG_BYTES} bytes" in str(err)
    # counted in bytes, not characters
    err = refused(text[:-2] + "é\n")   # as many characters as the limit, one byte more
    assert err.field == "(the document)"


def test_defaults_accepted_kind_api_version_and_current_context_may_be_left_out():
    document = changed(lambda d: [d.pop(k) for k in ("kind", "apiVersion", "current-context", "preferences")])
    assert parse(document).server == "https://10.0.0.5:16443"


@pytest.mark.parametrize("change, field, found", [
    (lambda d: d.update(apiVersion="v2"), "kind", "not a v1 Config"),
    (lambda d: d.update(kind="Config2"), "kind", "not a v1 Config"),
    (lambda d: d.update(apiVersion="v0"), "kind", "not a v1 Config"),       # sorting before the accepted ones
    (lambda d: d.update(kind="Bundle"), "kind", "not a v1 Config"),
    (lambda d: d.update({"current-context": "aaa"}), "current-context", "a context the file does not define"),
    (lambda d: d.update(clusters=[]), "clusters", "0 entries where exactly one entry belongs"),
    (lambda d: d.update(users={"name": "admin"}), "users", "dict where exactly one entry belongs"),
    (lambda d: d.update(contexts=["microk8s"]), "contexts[0]", "str where a mapping belongs"),
    (lambda d: d["clusters"][0].update(extra=1), "clusters[0].extra", "a field the kit does not accept here "
                                                                      "(accepted: name, cluster)"),
    (lambda d: d["clusters"][0].update(name=7), "clusters[0].name", "int"),
    (lambda d: d["users"][0].update(name=""), "users[0].name", "a malformed value (not shown)"),
    (lambda d: d["clusters"][0].pop("cluster"), "clusters[0].cluster.server", "NoneType"),
    (lambda d: d["clusters"][0].update(cluster=[]), "clusters[0].cluster", "list where a mapping belongs"),
    (lambda d: d["contexts"][0]["context"].update(cluster="other"), "contexts[0].context", "does not define"),
    (lambda d: d["contexts"][0]["context"].update(cluster="a-cluster"), "contexts[0].context", "does not define"),
    (lambda d: d["contexts"][0]["context"].update(user="aaa"), "contexts[0].context", "does not define"),
    (lambda d: d["clusters"][0]["cluster"].update(server="https://"), "clusters[0].cluster.server",
     "not an https:// URL"),
    (lambda d: d["clusters"][0]["cluster"].update(server="ftp://h"), "clusters[0].cluster.server",
     "not an https:// URL"),
    (lambda d: d["clusters"][0]["cluster"].update(server=""), "clusters[0].cluster.server", "a malformed value"),
    (lambda d: d["clusters"][0]["cluster"].update({"certificate-authority-data": "%%%"}),
     "clusters[0].cluster.certificate-authority-data", "a value that is not base64"),
    (lambda d: d["clusters"][0]["cluster"].update({"certificate-authority-data": 5}),
     "clusters[0].cluster.certificate-authority-data", "int"),
    (lambda d: d["users"][0]["user"].update({"client-certificate-data": "é"}), "users[0].user.client-certificate-data",
     "a value that is not base64"),
    (lambda d: d["users"][0]["user"].update(token=5), "users[0].user.token", "int"),
    (lambda d: d["users"][0]["user"].update(token="x" * 8193), "users[0].user.token", "a malformed value"),
    (lambda d: d["users"][0]["user"].update(token="a b"), "users[0].user.token", "a malformed value"),
    (lambda d: d["contexts"][0]["context"].update(namespace="Team"), "contexts[0].context.namespace", "a malformed"),
    (lambda d: d["contexts"][0]["context"].update(namespace="a" * 64), "contexts[0].context.namespace", "a malformed"),
    (lambda d: d["contexts"][0]["context"].update(namespace=""), "contexts[0].context.namespace", "a malformed"),
], ids=["api-version", "kind", "api-version-before", "kind-before", "current-context-before", "no-cluster",
        "users-mapping", "context-text", "entry-field", "name-number", "name-empty", "no-cluster-fields", "cluster-list",
        "context-cluster", "context-cluster-before", "context-user-before", "no-host", "scheme", "server-empty",
        "ca-not-base64", "ca-number", "cert-not-ascii", "token-number", "token-long", "token-space",
        "namespace-upper", "namespace-long", "namespace-empty"])
def test_each_shape_is_refused_naming_its_field(change, field, found):
    err = refused(changed(change))
    assert err.field == field and f"Got {field}: " in str(err) and found in str(err)


@pytest.mark.parametrize("user, accepted", [
    ({"token": "t"}, True),
    ({"token": "x" * 8192}, True),
    ({"client-certificate-data": B64, "client-key-data": B64}, True),
    ({"client-certificate-data": B64}, False),
    ({"client-key-data": B64}, False),
    ({}, False),
    ({"token": "t", "client-certificate-data": B64}, False),
    ({"token": "t", "client-key-data": B64}, False),
    ({"token": "t", "client-certificate-data": B64, "client-key-data": B64}, False),
], ids=["token", "token-longest", "certificate", "certificate-only", "key-only", "nothing", "token-certificate",
        "token-key", "all"])
def test_a_token_alone_or_a_certificate_with_its_key(user, accepted):
    document = microk8s_config(**user) if user else changed(lambda d: d["users"][0].update(user={}))
    if accepted:
        checked = parse(document)
        assert (checked.token, checked.client_certificate_data, checked.client_key_data) == (
            user.get("token"), user.get("client-certificate-data"), user.get("client-key-data"))
    else:
        err = refused(document)
        assert err.field == "users[0].user" and "neither a token alone nor client-certificate-data" in str(err)


@pytest.mark.parametrize("server", ["http://10.0.0.5:8080", "https://cluster.example", "https://[::1]:16443"])
def test_a_server_url_with_a_host_is_accepted(server):
    assert parse(changed(lambda d: d["clusters"][0]["cluster"].update(server=server))).server == server


@pytest.mark.parametrize("namespace", ["a", "team-1", "a" * 63, "0"])
def test_a_namespace_label_is_accepted(namespace):
    document = changed(lambda d: d["contexts"][0]["context"].update(namespace=namespace))
    assert parse(document).namespace == namespace


def test_what_is_left_out_is_none():
    document = changed(lambda d: d["clusters"][0]["cluster"].pop("certificate-authority-data"))
    checked = parse(document)
    assert checked.certificate_authority_data is None and checked.namespace is None and checked.token is None
    assert parse(microk8s_config()).certificate_authority_data == B64


def test_a_long_refused_server_is_shown_cut_at_100_characters():
    server = "ftp://" + "h" * 200
    err = refused(changed(lambda d: d["clusters"][0]["cluster"].update(server=server)))
    assert f"Got clusters[0].cluster.server: {server[:100]!r}, not an https:// URL instead" in str(err)


def test_the_source_is_named_and_a_top_level_field_has_no_dot():
    with pytest.raises(UnsafeKubeconfig) as err:
        parse_foreign_kubeconfig(yaml.safe_dump({**microk8s_config(), "oops": 1}), source="THE SOURCE")
    assert err.value.field == "oops" and str(err.value).startswith("The kubeconfig from THE SOURCE must hold")
    assert "it was refused before any Kubernetes client was built" in str(err.value)
