"""`meshway get -o jsonpath|jsonpath-as-json|jsonpath-file|custom-columns|custom-columns-file`, --sort-by
and --allow-missing-template-keys against the real kubectl, byte for byte.

The same objects are applied to a meshway store and served to kubectl by a fake API server (the objects
as `meshway get -o json` prints them, so both sides see identical data); then `meshway get ARGS` and
`kubectl get ARGS` run with the same ARGS. A failing kubectl must fail in meshway too, with kubectl's
first line of error (meshway leaves out kubectl's Go dump of the object). Where kubectl's order is Go's
random map order (`*` over a map, `..`), the words are compared as a sorted list.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_apiserver import FakeAPIServer
from kube_support import require_kubectl
from meshway.cli.main import cli

OBJECTS = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  labels: {app: web, app.kubernetes.io/name: web, tier: front}
  annotations: {note: "<b>&</b> é"}
spec:
  priority: 10
  containers:
  - {name: main, image: "nginx:1.27", ports: [{containerPort: 80, name: http}, {containerPort: 443}]}
  - {name: side, image: envoy}
  extra: {ratio: 1.5, big: 1000000.0, small: 0.00001, tiny: 1.0e-9, flag: true, none: null, empty: [], emptymap: {},
          words: [a, b], nested: {x: [1, 2], y: {z: "q"}}}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-10
  labels: {app: web}
spec:
  priority: 5
  containers: [{name: main, image: "nginx:1.28"}]
  extra: {flag: false, ratio: 2.5, blank: ""}
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  labels: {app: db, tier: back}
spec:
  containers: [{name: postgres, image: "postgres:17"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: web}}
data: {a.conf: "x=1", b: "two words"}
"""

LIST = "pods"
JSONPATH = [  # (template, unordered)
    ("{.items[*].metadata.name}", False),
    ('{range .items[*]}{.metadata.name}{"\\t"}{.spec.priority}{"\\n"}{end}', False),
    ("{.items[0].metadata.labels.app\\.kubernetes\\.io/name}", False),
    ("{.items[*].metadata.labels['tier']}", False),
    ('{.items[?(@.metadata.labels.app=="web")].metadata.name}', False),
    ('{.items[?(@.status.phase!="Running")].metadata.name}', False),
    ("{.items[?(@.spec.priority>5)].metadata.name}", False),
    ("{.items[?(@.spec.priority<=5)].metadata.name}", False),
    ("{.items[?(@.spec.extra.ratio>2.0)].metadata.name}", False),
    ("{.items[?(@.spec.extra.flag==true)].metadata.name}", False),
    ("{.items[?(@.metadata.labels.tier)].metadata.name}", False),
    ('{.items[*].spec.containers[?(@.name=="main")].image}', False),
    ("{.items[0:2].metadata.name}", False),
    ("{.items[-1].metadata.name}", False),
    ("{.items[::2].metadata.name}", False),
    ("{.items[1:].metadata.name}", False),
    ("{.items[0:0].metadata.name}", False),
    ("{.items[0].spec.containers[0,1].name}", False),
    ("{.items[0].metadata['name','namespace']}", False),
    ("{.items[*]['metadata']['name']}", False),
    ("{.items[*].spec.containers[*].ports[*].containerPort}", False),
    ("{.items[0].spec.extra}", False),
    ("{.items[0].spec.extra.ratio} {.items[0].spec.extra.big} {.items[0].spec.extra.small} "
     "{.items[0].spec.extra.tiny} {.items[0].spec.extra.flag} {.items[0].spec.extra.none}", False),
    ("{.items[0].spec.extra.empty}|{.items[0].spec.extra.emptymap}|{.items[0].spec.extra.words}", False),
    ("{.items[0].metadata.annotations.note}", False),
    ("{.items[0].metadata.labels}", False),
    ("{.kind} {.apiVersion} {.metadata}", False),
    ("{$.kind}{@.kind}{ .kind }", False),
    ("x{.items[0].metadata.name}y}z", False),
    ("{.items[0].metadata.name}{'\\n'}", False),
    ("{.items[*].nope}{.items[0].metadata.name.deeper}", False),
    ("{range .items[*]}[{.metadata.name}:{range .spec.containers[*]}{.name},{end}]{end}", False),
    ('{range .items[*]}{.metadata.labels.tier}{"\\n"}{end}', False),
    ("{range .items[?(@.metadata.name==\"none\")]}{.metadata.name}x{end}after", False),
    ("{.items[0].metadata.name.*}", False),
    ("{.items[0].metadata.labels.*}", True),
    ("{..image}", True),
    ("{.items[0].spec..name}", True),
    ("no action at all", False),
    ("", False),
    # kubectl's errors
    ("{.items[5].metadata.name}", False),
    ("{.items[0:9]}", False),
    ("{.items[-5]}", False),
    ("{.items[2:1]}", False),
    ("{.items[::0]}", False),
    ("{.items[0].metadata[0]}", False),
    ("{.items[0].metadata.name[*]}", False),
    ("{.items[?(@.spec.priority==\"10\")].metadata.name}", False),
    ("{.items[", False),
    ("{.items[x]}", False),
    ("{.items[0].bad!}", False),
    ("{foo}", False),
    ("{end}", False),
    ('{"unterminated}', False),
    ("{.items[0]", False),
    ("{.a...b}", False),
    ("{.items[?(@.a==1]}", False),
]
SINGLE = ["{.metadata.name}", "{.spec.containers[*].image}", "{.items[*].metadata.name}", "{.metadata}",
          "{range .spec.containers[*]}{.name}={.image}{\"\\n\"}{end}"]
OTHER_ARGS = [  # whole argument lists after `get`
    [LIST, "-o", "jsonpath-as-json={.items[*].metadata.name}"],
    [LIST, "-o", "jsonpath-as-json={.items[0].spec.extra}{.kind}{.nope}"],
    ["pod", "web-2", "-o", "jsonpath-as-json={.spec.containers[*].ports}"],
    [LIST, "-o", "jsonpath={.items[*].nope}", "--allow-missing-template-keys=false"],
    [LIST, "-o", "jsonpath={.items[*].metadata.name}", "--allow-missing-template-keys=false"],
    [LIST, "-o", "jsonpath={range .items[*]}{.spec.extra.flag}{end}", "--allow-missing-template-keys=false"],
    [LIST, "-o", "jsonpath={.items[?(@.spec.priority>1)].metadata.name}", "--allow-missing-template-keys=false"],
    [LIST, "-o", "jsonpath"],
    [LIST, "-o", "jsonpath="],
    [LIST, "-o", "custom-columns=NAME:.metadata.name,IMAGES:.spec.containers[*].image,P:{.spec.priority}"],
    [LIST, "-o", "custom-columns=N:metadata.name,EXTRA:.spec.extra,LABELS:.metadata.labels,W:.spec.extra.words,"
                 "F:.spec.extra.ratio,B:.spec.extra.flag,NULL:.spec.extra.none,E:.spec.extra.empty"],
    [LIST, "-o", "custom-columns=A:.metadata.name,PORTS:.spec.containers[*].ports[*].containerPort"],
    ["pod", "db", "-o", "custom-columns=NAME:.metadata.name,MISSING:.status.podIP.x"],
    ["configmap", "-o", "custom-columns=NAME:.metadata.name,DATA:.data"],
    [LIST, "-o", "custom-columns=NAME"],
    [LIST, "-o", "custom-columns="],
    [LIST, "-o", "custom-columns=NAME:{.a}{.b}"],
    [LIST, "-o", "custom-columns=X:.items[}"],
    [LIST, "--sort-by=.metadata.name", "-o", "jsonpath={.items[*].metadata.name}"],
    [LIST, "--sort-by={.spec.priority}", "-o", "jsonpath={.items[*].metadata.name}"],
    [LIST, "--sort-by=spec.extra.ratio", "-o", "custom-columns=NAME:.metadata.name,R:.spec.extra.ratio"],
    [LIST, "--sort-by=.spec.containers[0].image", "-o", "jsonpath={.items[*].metadata.name}"],
    [LIST, "--sort-by=.nope", "-o", "jsonpath={.items[*].metadata.name}"],
    ["pod", "web-10", "-o", "jsonpath={.metadata.name}", "--sort-by=.spec.priority"],
    [LIST, "--sort-by=.metadata.name", "-o", "custom-columns=N:.metadata.name"],
    [LIST, "-o", "custom-columns=N:.metadata.name,BLANK:.spec.extra.blank"],
    ["services", "-o", "jsonpath={.items}|{.items[*].metadata.name}|{.kind}"],
    ["services", "-o", "jsonpath={.items[0]}"],
    ["services", "-o", "custom-columns=N:.metadata.name", "--sort-by=.metadata.name"],
    [LIST, "-o", "custom-columns=BLANK:.spec.extra.blank,N:.metadata.name"],
    ["pods,configmaps", "-o", "jsonpath={.items[*].kind} {.items[*].metadata.name}"],
    ["pods,configmaps", "-o", "custom-columns=KIND:.kind,NAME:.metadata.name", "--sort-by=.metadata.name"],
    [LIST, "--sort-by=.metadata.name", "-o", "jsonpath-as-json={.items[*].metadata.name}"],
]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory):
    """(run meshway get ARGS, run kubectl get ARGS), each returning (exit code, stdout, stderr)."""
    kubectl = require_kubectl()
    tmp = tmp_path_factory.mktemp("jsonpath")
    state = tmp / "state"
    runner = CliRunner()
    (tmp / "objects.yaml").write_text(OBJECTS)
    assert runner.invoke(cli, ["--state-dir", str(state), "apply", "-f", str(tmp / "objects.yaml")]).exit_code == 0
    served = []
    for kind in ("pods", "configmaps"):
        out = runner.invoke(cli, ["--state-dir", str(state), "get", kind, "-o", "json"]).stdout
        served += json.loads(out)["items"]

    def meshway(args: list[str]) -> tuple[int, str, str]:
        result = runner.invoke(cli, ["--state-dir", str(state), "get", *args])
        return result.exit_code, result.stdout, result.stderr

    with FakeAPIServer(served) as server:
        def kube(args: list[str]) -> tuple[int, str, str]:
            proc = subprocess.run([str(kubectl), "--server", server.url, "--cache-dir", str(tmp / "cache"),
                                   "get", *args], capture_output=True, text=True, timeout=60)
            return proc.returncode, proc.stdout, proc.stderr

        yield meshway, kube


def assert_same(sides, args: list[str], unordered: bool = False, klog_fatal: bool = False) -> None:
    meshway, kube = sides
    want_rc, want_out, want_err = kube(args)
    rc, out, err = meshway(args)
    if want_rc:
        first_line = want_err.splitlines()[0]
        if klog_fatal:  # klog.Fatalf's "F1203 12:59:47.160477   31532 sorter.go:329] MESSAGE"
            assert first_line.startswith("F"), want_err
            first_line = "error: " + first_line.partition("] ")[2]
        assert rc == 1 and not out, (args, rc, out, err)
        assert err.endswith("\n") and err.count("\n") == 1, err
        assert first_line.startswith(err.rstrip("\n")), f"\nkubectl: {first_line}\nmeshway: {err}"
        return
    assert rc == 0, (args, err)
    if unordered:
        assert sorted(out.split()) == sorted(want_out.split()) and out.split() != [], (args, out, want_out)
    else:
        assert out == want_out, f"{args}\nkubectl: {want_out!r}\nmeshway: {out!r}"


@pytest.mark.parametrize(("template", "unordered"), JSONPATH, ids=[t for t, _ in JSONPATH])
def test_jsonpath_on_a_list_as_kubectl(sides, template: str, unordered: bool) -> None:
    assert_same(sides, [LIST, "-o", f"jsonpath={template}"], unordered)


@pytest.mark.parametrize("template", SINGLE)
def test_jsonpath_on_one_named_object_as_kubectl(sides, template: str) -> None:
    assert_same(sides, ["pod", "web-2", "-o", f"jsonpath={template}"])


@pytest.mark.parametrize("args", OTHER_ARGS, ids=[" ".join(a) for a in OTHER_ARGS])
def test_other_formats_and_flags_as_kubectl(sides, args: list[str]) -> None:
    assert_same(sides, args)


def test_template_and_column_files_as_kubectl(sides, tmp_path: Path) -> None:
    template = tmp_path / "t.jsonpath"
    template.write_text('{range .items[*]}{.metadata.name}{"\\n"}{end}')
    columns = tmp_path / "columns.txt"
    columns.write_text("NAME      IMAGE\n.metadata.name   {.spec.containers[0].image}\n")
    short = tmp_path / "short.txt"
    short.write_text("NAME IMAGE\n")
    mismatch = tmp_path / "mismatch.txt"
    mismatch.write_text("NAME IMAGE\n.metadata.name\n")
    for args in ([LIST, "-o", f"jsonpath-file={template}"], [LIST, "-o", f"custom-columns-file={columns}"],
                 [LIST, "-o", f"custom-columns-file={short}"], [LIST, "-o", f"custom-columns-file={mismatch}"]):
        assert_same(sides, args)


@pytest.mark.parametrize("path", [".metadata.labels", ".spec.extra.flag", ".spec.extra.ratio", ".spec.priority"])
def test_sort_by_numbers_and_unsortable_fields_as_kubectl(sides, path: str) -> None:
    """kubectl exits through klog.Fatalf (a klog header); meshway prints the same message as an
    error with code 1. (.spec.extra.ratio and .spec.priority sort: kubectl and meshway must agree.)"""
    assert_same(sides, [LIST, f"--sort-by={path}", "-o", "jsonpath={.items[*].metadata.name}"], klog_fatal=True)


def test_an_unknown_output_format_fails_naming_the_formats(sides) -> None:
    """kubectl's message, less the formats meshway does not have (go-template, kyaml, template)."""
    meshway, kube = sides
    rc, out, err = meshway([LIST, "-o", "yaml-nope"])
    want_rc, _, want_err = kube([LIST, "-o", "yaml-nope"])
    prefix = 'error: unable to match a printer suitable for the output format "yaml-nope", allowed formats are: '
    assert (rc, out, want_rc) == (1, "", 1) and want_err.startswith(prefix) and err.startswith(prefix)
    theirs = set(want_err.removeprefix(prefix).strip().split(","))
    ours = set(err.removeprefix(prefix).strip().split(","))
    assert ours < theirs and theirs - ours == {"go-template", "go-template-file", "kyaml", "template", "templatefile"}
