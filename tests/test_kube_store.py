"""The CLI on a Kubernetes API (`meshway --kubeconfig`), without a server: the backend rule as a
table, `KubeStore`'s pure decisions as tables, and `KubeStore` plus the CLI against an in-memory
fake of the API's verbs (server-side apply with dry run, merge patch with resourceVersion
preconditions, delete with uid preconditions, 404 for an uninstalled kind, 422 from validation).
The real kube-apiserver runs in tests/test_kube_cli_e2e.py."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshway.cli import backend as B
from meshway.cli import explain, waypoint  # noqa: F401  (register commands)
from meshway.cli.main import cli
from meshway.kube import store as KS
from meshway.kube.client import APPLY_PATCH, MERGE_PATCH, ApiError
from meshway.model import find_kind, load_yaml
from meshway.model.selectors import parse_selector
from meshway.store import Store
from meshway.store.errors import Invalid, LabelConflict, NotFound

BOOKINFO = Path(__file__).resolve().parents[1] / "meshway" / "demo" / "bookinfo.yaml"
SVC = find_kind("svc")
NS = find_kind("ns")


# -- the backend rule ----------------------------------------------------------------------------
@pytest.mark.parametrize("kubeconfig,context,flag,env,kenv,command,expected", [
    (None, None, False, False, None, "get", "embedded"),
    ("kc", None, False, False, None, "get", "--kubeconfig"),
    (None, "ctx", False, False, None, "get", "--context"),
    ("kc", None, False, True, None, "get", "--kubeconfig"),          # a flag beats MESHWAY_STATE_DIR
    (None, None, False, False, "EXISTS", "get", "$KUBECONFIG"),
    (None, None, True, False, "EXISTS", "get", "embedded"),         # --state-dir wins over $KUBECONFIG
    (None, None, False, True, "EXISTS", "get", "embedded"),         # so does MESHWAY_STATE_DIR
    (None, None, False, False, "EXISTS", "up", "embedded"),         # the local mesh never moves
    (None, None, False, False, "EXISTS", "status", "embedded"),
    (None, None, False, False, "EXISTS", "controlplane", "embedded"),  # only its own/global --kubeconfig
    ("kc", None, False, False, None, "install", "--kubeconfig"),
    ("kc", None, True, False, None, "get", "error: name two stores"),
    ("kc", None, False, False, None, "exec", "error: works on the local mesh"),
    (None, None, False, False, "/nonexistent/kc", "get", "error: names no file that exists"),
    (None, None, False, False, "", "get", "embedded"),
])
def test_choose_backend(tmp_path, kubeconfig, context, flag, env, kenv, command, expected):
    if kenv == "EXISTS":
        (tmp_path / "kc").write_text("{}")
        kenv = str(tmp_path / "kc")
    if expected.startswith("error: "):
        with pytest.raises(ValueError, match=re.escape(expected.removeprefix("error: "))):
            B.choose_backend(kubeconfig, context, flag, env, kenv, command)
        return
    got = B.choose_backend(kubeconfig, context, flag, env, kenv, command)
    assert (got.why if got.kubernetes else "embedded") == expected


# -- pure decisions -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,query", [
    ("app=reviews", "app in (reviews)"),
    ("app=reviews,version!=v1", "app in (reviews),version notin (v1)"),
    ("tier in (a,b),x,!y", "tier in (a,b),x,!y"),
    ("", ""),
])
def test_format_selector_round_trips(text, query):
    assert KS.format_selector(parse_selector(text)) == query
    assert KS.format_selector(parse_selector(query)) == query


@pytest.mark.parametrize("live,applied,word", [
    (None, {"metadata": {"resourceVersion": "5"}}, "created"),
    ({"metadata": {"resourceVersion": "5"}}, {"metadata": {"resourceVersion": "5"}}, "unchanged"),
    ({"metadata": {"resourceVersion": "5"}}, {"metadata": {"resourceVersion": "7"}}, "configured"),
])
def test_decide_apply_action(live, applied, word):
    assert KS.decide_apply_action(live, applied) == word


@pytest.mark.parametrize("labels,set_,remove,overwrite,patch", [
    ({}, {"a": "1"}, [], False, {"a": "1"}),
    ({"a": "1"}, {"a": "1"}, [], False, None),                    # not labeled
    ({"a": "1"}, {"a": "2"}, [], True, {"a": "2"}),
    ({"a": "1", "b": "2"}, {}, ["b", "ghost"], False, {"b": None}),
    ({"a": "1"}, {"c": "3"}, ["c"], False, None),                   # set, then removed: as Store.label
])
def test_plan_labels(labels, set_, remove, overwrite, patch):
    assert KS.plan_labels(labels, set_, remove, overwrite) == patch


def test_plan_labels_refuses_a_changed_value_without_overwrite_as_the_store_does():
    with pytest.raises(LabelConflict) as err:
        KS.plan_labels({"a": "1"}, {"a": "2"}, [], False)
    assert str(err.value) == "error: 'a' already has a value (1), and --overwrite is false"


NOW = datetime(2026, 12, 2, 18, 0, 0, tzinfo=timezone.utc)


def _lease(holder: str, renewed: datetime, duration: int = 15) -> dict:
    return {"spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}


@pytest.mark.parametrize("lease,held", [
    (None, False),
    (_lease("cp-1", NOW - timedelta(seconds=3)), True),
    (_lease("cp-1", NOW - timedelta(seconds=16)), False),   # expired: killed without releasing
    (_lease("", NOW - timedelta(seconds=1), 1), False),     # released on a clean stop
])
def test_detect_lease_held(lease, held):
    assert KS.detect_lease_held(lease, NOW) is held


@pytest.mark.parametrize("exc,expected", [
    (ApiError(404, "NotFound", 'services "ghost" not found'),
     'Error from server (NotFound): services "ghost" not found'),
    (ApiError(404, "NotFound", "the server could not find the requested resource"),
     'error: no matches for kind "Service" in group "": ensure CRDs are installed first (meshway install)'),
    (ApiError(422, "Invalid", 'Service "ghost" is invalid: spec.ports[0].port: Invalid value: 0\nsecond line'),
     'Error from server (Invalid): Service "ghost" is invalid: spec.ports[0].port: Invalid value: 0; second line'),
    (ApiError(409, "Conflict", "Operation cannot be fulfilled: the object has been modified"),
     "Error from server (Conflict): service/ghost: Operation cannot be fulfilled: the object has been modified"),
    (ApiError(403, "Forbidden", 'services "ghost" is forbidden: User "bob" cannot get'),
     'Error from server (Forbidden): services "ghost" is forbidden: User "bob" cannot get'),
])
def test_describe_api_error(exc, expected):
    assert str(KS.describe_api_error(exc, SVC, "ghost")) == expected


def test_object_path_uses_the_documents_version():
    vs = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
          "metadata": {"name": "r", "namespace": "default"}}
    assert KS.object_path(vs, find_kind("vs")) == \
        "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices/r"
    assert KS.object_path({"apiVersion": "v1", "metadata": {"name": "x"}}, NS) == "/api/v1/namespaces/x"


def test_as_output_hides_managed_fields_and_names_the_kind():
    out = KS.as_output(SVC, {"metadata": {"name": "a", "managedFields": [{}]}, "spec": {}})
    assert out == {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {}}


# -- KubeStore against a fake API ------------------------------------------------------------------
PATH = re.compile(r"^(/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/([^/]+))?/([a-z]+)(?:/([^/]+))?$")


class FakeApi:
    """The verbs KubeStore uses, on a dict: objects keyed by (group, plural, namespace, name)."""

    host = "https://fake:6443"

    def __init__(self, served=("", "apps", "gateway.networking.k8s.io", "coordination.k8s.io"), refuse=None):
        self.served, self.refuse = set(served), refuse or (lambda body: None)
        self.objects: dict[tuple, dict] = {}
        self.rv = 100
        self.writes: list[tuple[str, str]] = []
        for ns in ("default", "kube-system"):
            self._put(("", "namespaces", "", ns), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    def _key(self, path: str) -> tuple:
        m = PATH.match(path)
        assert m, path
        base, ns, plural, name = m.groups()
        group = "" if base == "/api/v1" else base.split("/")[2]
        if group not in self.served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if plural == "namespaces" and ns and not name:  # /api/v1/namespaces/NAME
            return (group, "namespaces", "", ns)
        return (group, plural, ns or "", name)

    def _put(self, key, body):
        self.rv += 1
        body["metadata"].update(resourceVersion=str(self.rv), uid=body["metadata"].get("uid") or f"uid-{self.rv}",
                                creationTimestamp="2026-12-02T18:00:00Z", managedFields=[{"manager": "x"}])
        self.objects[key] = body

    def get(self, path):
        key = self._key(path)
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        return json.loads(json.dumps(self.objects[key]))

    def list(self, path, **query):
        group, plural, ns, name = self._key(path + "/x")
        items = [json.loads(json.dumps(b)) for k, b in sorted(self.objects.items())
                 if k[:2] == (group, plural) and (not ns or k[2] == ns)]
        for b in items:
            b.pop("kind"), b.pop("apiVersion")  # as the API lists built-in kinds
        yield {"items": items, "metadata": {"resourceVersion": str(self.rv)}}

    def request(self, method, path, query, body, content_type):
        key = self._key(path)
        if content_type == APPLY_PATCH:
            doc = json.loads(body)
            if key[2] and ("", "namespaces", "", key[2]) not in self.objects:
                raise ApiError(404, "NotFound", f'namespaces "{key[2]}" not found')
            err = self.refuse(doc)
            if err:
                raise err
            live = self.objects.get(key)
            merged = {**(live or {}), **{k: v for k, v in doc.items() if k != "metadata"}}
            merged["metadata"] = {**(live or {}).get("metadata", {}), **doc["metadata"]}
            if query.get("dryRun"):
                return merged
            self.writes.append(("apply", path))
            strip = lambda b: {k: v for k, v in b.items() if k != "metadata"} | {  # noqa: E731
                "labels": b["metadata"].get("labels")}
            if live is None or strip(live) != strip(merged):
                self._put(key, merged)
            return self.get(path)
        assert content_type == MERGE_PATCH
        live = self.objects[key]
        if body["metadata"]["resourceVersion"] != live["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {key[1]} "{key[3]}": the object has '
                                            "been modified")
        labels = {**live["metadata"].get("labels", {}), **body["metadata"]["labels"]}
        live["metadata"]["labels"] = {k: v for k, v in labels.items() if v is not None}
        self.writes.append(("label", path))
        self._put(key, live)
        return self.get(path)

    def delete(self, path, uid=None, propagation=None):
        key = self._key(path)
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        assert uid == self.objects[key]["metadata"]["uid"]
        self.writes.append(("delete", path))
        del self.objects[key]
        if key[1] == "namespaces":
            for k in [k for k in self.objects if k[2] == key[3]]:
                del self.objects[k]
        return {}

    def close(self):
        pass


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def kstore(api) -> KS.KubeStore:
    return KS.KubeStore(api, sleep=lambda s: None)


def manifests(text: str, source: str = "test.yaml"):
    return load_yaml(text, source)


SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {ports: [{port: 81}]}
"""


def test_apply_reports_created_unchanged_configured(kstore):
    assert [str(r) for r in kstore.apply(manifests(SERVICES))] == ["service/a created", "service/b created"]
    assert [str(r) for r in kstore.apply(manifests(SERVICES))] == ["service/a unchanged", "service/b unchanged"]
    changed = SERVICES.replace("port: 81", "port: 82")
    assert [str(r) for r in kstore.apply(manifests(changed))] == ["service/a unchanged", "service/b configured"]


def test_apply_is_all_or_nothing_when_the_server_refuses_a_later_document(api, kstore):
    api.refuse = lambda body: ApiError(422, "Invalid", 'Service "b" is invalid: spec.ports[0].port: Invalid value') \
        if body["metadata"]["name"] == "b" else None
    with pytest.raises(Invalid) as err:
        kstore.apply(manifests(SERVICES))
    assert str(err.value) == ('Error from server (Invalid): error when creating "test.yaml": Service "b" is invalid: '
                              "spec.ports[0].port: Invalid value")
    assert api.writes == []


def test_apply_into_a_missing_namespace_is_the_embedded_stores_error(api, kstore, tmp_path):
    text = SERVICES.replace("name: a}", "name: a, namespace: ghost}")
    with pytest.raises(NotFound) as kerr:
        kstore.apply(manifests(text))
    embedded = Store(tmp_path / "s")
    with pytest.raises(NotFound) as eerr:
        embedded.apply(manifests(text))
    assert str(kerr.value) == str(eerr.value) == \
        'Error from server (NotFound): error when creating "test.yaml": namespaces "ghost" not found'
    assert api.writes == []


def test_apply_creates_a_namespace_and_its_contents_in_one_go(api, kstore):
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n" + \
        SERVICES.replace("name: a}", "name: a, namespace: shop}")
    assert [str(r) for r in kstore.apply(manifests(text))] == \
        ["namespace/shop created", "service/a created", "service/b created"]


def test_apply_of_a_kind_whose_crd_is_missing_says_so(api, kstore):
    vs = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
          "spec: {hosts: [r], http: [{route: [{destination: {host: r}}]}]}\n")
    with pytest.raises(KS.ClientError) as err:
        kstore.apply(manifests(SERVICES + "---\n" + vs))
    assert str(err.value) == ('error: error when creating "test.yaml": no matches for kind "VirtualService" in group '
                              '"networking.istio.io": ensure CRDs are installed first (meshway install)')
    assert api.writes == []


def test_get_list_and_selectors(kstore):
    kstore.apply(manifests(SERVICES.replace("name: a}", "name: a, labels: {app: x}}")))
    assert kstore.get(SVC, "default", "a")["kind"] == "Service"
    assert "managedFields" not in kstore.get(SVC, "default", "a")["metadata"]
    assert [b["metadata"]["name"] for b in kstore.list(SVC, "default", parse_selector("app=x"))] == ["a"]
    assert [b["apiVersion"] for b in kstore.list(SVC, None)] == ["v1", "v1"]
    with pytest.raises(NotFound, match='services "ghost" not found'):
        kstore.get(SVC, "default", "ghost")


def test_an_uninstalled_kind_reads_as_kubectl_says_and_snapshots_empty(kstore):
    from meshway.model.registry import UnknownKind

    with pytest.raises(UnknownKind, match='the server doesn\'t have a resource type "virtualservices"'):
        kstore.list(find_kind("vs"), "default")
    assert kstore.snapshot(("Service", "VirtualService"))[1]["VirtualService"] == []


def test_label_as_the_embedded_store(api, kstore):
    assert [str(r) for r in kstore.label(NS, None, ["default"], None, {"a": "1"}, [])] == ["namespace/default labeled"]
    assert [str(r) for r in kstore.label(NS, None, ["default"], None, {"a": "1"}, [])] == \
        ["namespace/default not labeled"]
    with pytest.raises(LabelConflict):
        kstore.label(NS, None, ["default"], None, {"a": "2"}, [])
    with pytest.raises(NotFound, match='namespaces "ghost" not found'):
        kstore.label(NS, None, ["default", "ghost"], None, {"b": "1"}, [])
    assert kstore.get(NS, "", "default")["metadata"]["labels"] == {"a": "1"}  # nothing changed on the error
    kstore.label(NS, None, ["default"], None, {}, ["a"])
    assert "a" not in (kstore.get(NS, "", "default")["metadata"].get("labels") or {})


def test_delete_checks_every_target_first_then_deletes(api, kstore):
    kstore.apply(manifests(SERVICES))
    with pytest.raises(NotFound, match='services "ghost" not found'):
        kstore.delete([(SVC, "default", "a"), (SVC, "default", "ghost")])
    assert not [w for w in api.writes if w[0] == "delete"]
    assert [str(r) for r in kstore.delete([(SVC, "default", "a"), (SVC, "default", "ghost")], True)] == \
        ["service/a deleted"]


def test_controlplane_running_reads_the_lease(api, kstore):
    assert kstore.controlplane_running() is False  # no Lease
    now = datetime.now(timezone.utc)
    api._put(("coordination.k8s.io", "leases", "istio-system", "meshway-controlplane"),
             {"metadata": {"name": "meshway-controlplane"}, **_lease("cp", now)})
    assert kstore.controlplane_running() is True


# -- the CLI on the fake API: the same lines as on the embedded store -------------------------------
@pytest.fixture
def cli_on(api, monkeypatch):
    monkeypatch.setattr(KS.KubeStore, "connect", classmethod(lambda cls, kc, ctx: cls(api, sleep=lambda s: None)))
    runner = CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(cli, ["--kubeconfig", "fake", *args])
        if ok:
            assert result.exit_code == 0, result.output + result.stderr
        return result
    return run


def test_cli_apply_get_label_delete_on_the_api(cli_on, tmp_path):
    out = cli_on("apply", "-f", str(BOOKINFO)).stdout
    embedded = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "s"), "apply", "-f", str(BOOKINFO)]).stdout
    assert out == embedded
    assert cli_on("get", "sa").stdout.splitlines()[0].split() == ["NAME", "SECRETS", "AGE"]
    assert cli_on("label", "ns", "default", "istio.io/dataplane-mode=ambient").stdout == "namespace/default labeled\n"
    assert cli_on("delete", "svc", "reviews").stdout == 'service "reviews" deleted\n'
    bad = cli_on("delete", "svc", "reviews", ok=False)
    assert (bad.exit_code, bad.stderr) == (1, 'Error from server (NotFound): services "reviews" not found\n')


def test_cli_bad_yaml_gets_the_embedded_error_and_writes_nothing(cli_on, api, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SERVICES.replace("port: 81", "port: 70000"))
    k = cli_on("apply", "-f", str(bad), ok=False)
    e = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "s"), "apply", "-f", str(bad)])
    assert (k.exit_code, k.stderr) == (e.exit_code, e.stderr) == (1, e.stderr)
    assert "spec.ports[0].port" in k.stderr and api.writes == []


def test_cli_waypoint_and_explain_on_the_api(cli_on):
    cli_on("apply", "-f", str(BOOKINFO))
    assert cli_on("waypoint", "apply", "--enroll-namespace").stdout.splitlines() == [
        "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`kubectl label namespace default "
        "istio.io/dataplane-mode=ambient`",
        "✅ waypoint default/waypoint applied",
        '✅ namespace default labeled with "istio.io/use-waypoint: waypoint"']
    assert cli_on("waypoint", "list").stdout.split("\n")[1].split() == ["waypoint", "default", "none", "False"]
    text = cli_on("explain", "service/reviews").stdout
    assert "Waypoint:     default/waypoint (not ready)" in text
    status = cli_on("waypoint", "status", ok=False)
    assert status.exit_code == 1 and "`meshway controlplane --kubeconfig FILE` starts it" in status.stderr
    assert cli_on("waypoint", "delete", "waypoint").stdout == "waypoint default/waypoint deleted\n"


def test_cli_explicit_kubeconfig_is_passed_to_install(monkeypatch):
    from meshway.kube import install as I

    seen = []
    monkeypatch.setattr(I, "install", lambda kc, ctx, echo: seen.append((kc, ctx)))
    result = CliRunner().invoke(cli, ["--kubeconfig", "kc", "--context", "c", "install"])
    assert result.exit_code == 0, result.output
    assert seen == [("kc", "c")]
