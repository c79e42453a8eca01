"""kubectl's JSONPath templates, custom columns and --sort-by as pure functions: tables of template ->
output on fixed data (each expected output is what kubectl prints for it; tests/test_jsonpath_kubectl.py
checks the same behaviour against the real binary)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from meshway.cli import printers as P
from meshway.cli.goprint import go_float, go_json, go_sprint
from meshway.cli.jsonpath import JSONPathError, relaxed, render
from meshway.cli.sortby import quantity, sort_items

POD = {
    "kind": "Pod",
    "metadata": {"name": "web-2", "labels": {"app": "web", "app.kubernetes.io/name": "web"},
                 "annotations": {"note": "<b>&</b>"}},
    "spec": {"priority": 10, "containers": [{"name": "main", "image": "nginx", "ports": [{"containerPort": 80},
                                                                                          {"containerPort": 443}]},
                                            {"name": "side", "image": "envoy"}],
             "extra": {"ratio": 1.5, "big": 1e6, "flag": True, "none": None, "empty": [], "map": {}}},
}
DB = {"kind": "Pod", "metadata": {"name": "db", "labels": {"app": "db"}}, "spec": {"containers": []},
      "status": {"phase": "Pending"}}
LIST = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": [POD, DB]}

RENDER = [
    ("{.metadata.name}", POD, "web-2"),
    ("{.items[*].metadata.name}", LIST, "web-2 db"),
    ('{range .items[*]}{.metadata.name}{"\\t"}{.metadata.labels.app}{"\\n"}{end}', LIST, "web-2\tweb\ndb\tdb\n"),
    ("{range .items[*]}[{range .spec.containers[*]}{.name},{end}]{end}", LIST, "[main,side,][]"),
    ("{.metadata.labels.app\\.kubernetes\\.io/name}", POD, "web"),
    ("{.metadata.labels['app']}", POD, "web"),
    ("{.metadata['name','kind']}", POD, "web-2"),
    ("{['kind','nope']}", POD, "Pod"),
    ("{.spec.containers[0,1].name}", POD, "main side"),
    ('{.items[?(@.metadata.labels.app=="db")].metadata.name}', LIST, "db"),
    ('{.items[?(@.metadata.name!="db")].metadata.name}', LIST, "web-2"),
    ("{.items[?(@.spec.priority>=10)].metadata.name}", LIST, "web-2"),
    ("{.items[?(@.status.phase)].metadata.name}", LIST, "db"),
    ("{.items[?(@.spec.extra.flag==true)].metadata.name}", LIST, "web-2"),
    ("{.items[0:1].metadata.name}|{.items[-1].metadata.name}|{.items[::2].metadata.name}", LIST, "web-2|db|web-2"),
    ("{.items[1:].metadata.name}{.items[0:0]}", LIST, "db"),
    ("{.spec.containers[*].ports[*].containerPort}", POD, "80 443"),
    ("{..image}", POD, "nginx envoy"),
    ("{.metadata.labels}", POD, '{"app":"web","app.kubernetes.io/name":"web"}'),
    ("{.metadata.annotations}", POD, '{"note":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"}'),
    ("{.metadata.annotations.note}", POD, "<b>&</b>"),
    ("{.spec.extra}", POD, '{"big":1000000,"empty":[],"flag":true,"map":{},"none":null,"ratio":1.5}'),
    ("{.spec.extra.ratio} {.spec.extra.big} {.spec.extra.flag} {.spec.extra.none}", POD, "1.5 1e+06 true null"),
    ("{.kind}{$.kind}{@.kind}{ .kind }", POD, "PodPodPodPod"),
    ("x{.kind}y}z", POD, "xPody}z"),
    ("{.kind}{'\\n'}", POD, "Pod\n"),
    ("{.metadata.name.*}", DB, "100 98"),
    ("{.nope}{.metadata.nope.deeper}{.items[*].nope}", LIST, ""),
    ('{range .items[?(@.kind=="None")]}{.x}never{end}after', LIST, "after"),
    ("no action", POD, "no action"),
    ("", POD, ""),
]


@pytest.mark.parametrize(("template", "data", "want"), RENDER, ids=[t for t, _, _ in RENDER])
def test_render(template: str, data: dict, want: str) -> None:
    assert render(template, data) == want


def test_render_as_json_prints_each_action_as_an_indented_array() -> None:
    assert render("{.items[*].metadata.name}{.nope}", LIST, as_json=True) == '[\n    "web-2",\n    "db"\n]\n[]\n'


ERRORS = [
    ("{.items[", "error parsing jsonpath {.items[, unterminated array"),
    ("{.items[x]}", "error parsing jsonpath {.items[x]}, invalid array index x"),
    ("{#}", "error parsing jsonpath {#}, unrecognized character in action: U+0023 '#'"),
    ('{"open}', "error parsing jsonpath {\"open}, unterminated quoted string"),
    ("{.kind", "error parsing jsonpath {.kind, unclosed action"),
    ("{.a....b}", "error parsing jsonpath {.a....b}, invalid multiple recursive descent"),
    ("{.items[?(@.a==1]}", "error parsing jsonpath {.items[?(@.a==1]}, unterminated filter"),
    ("{foo}", 'error executing jsonpath "{foo}": Error executing template: unrecognized identifier foo.'),
    ("{end}", 'error executing jsonpath "{end}": Error executing template: not in range, nothing to end.'),
    ("{.items[5]}", 'error executing jsonpath "{.items[5]}": Error executing template: array index out of bounds: '
                    "index 5, length 2."),
    ("{.items[0:9]}", 'error executing jsonpath "{.items[0:9]}": Error executing template: array index out of '
                      "bounds: index 8, length 2."),
    ("{.items[1:0]}", 'error executing jsonpath "{.items[1:0]}": Error executing template: starting index 1 is '
                      "greater than ending index 0."),
    ("{.items[::0]}", 'error executing jsonpath "{.items[::0]}": Error executing template: step must be > 0.'),
    ("{.metadata[0]}", 'error executing jsonpath "{.metadata[0]}": Error executing template: map[string]interface '
                       "{} is not array or slice."),
    ('{.items[?(@.spec.priority=="10")].kind}', 'error executing jsonpath "{.items[?(@.spec.priority==\\"10\\")]'
                                                '.kind}": Error executing template: incompatible types for '
                                                "comparison."),
]


@pytest.mark.parametrize(("template", "message"), ERRORS, ids=[t for t, _ in ERRORS])
def test_render_errors_are_kubectls_first_line(template: str, message: str) -> None:
    with pytest.raises(JSONPathError) as exc:
        render(template, LIST)
    assert str(exc.value) == message


def test_a_missing_key_is_an_error_only_when_missing_keys_are_not_allowed() -> None:
    assert render("{.items[*].status.phase}", LIST, allow_missing=False) == "Pending"  # found in one item
    with pytest.raises(JSONPathError, match=r'"\{.items\[\*\].nope\}": Error executing template: nope is not found'):
        render("{.items[*].nope}", LIST, allow_missing=False)


@pytest.mark.parametrize(("value", "want"), [(1.5, "1.5"), (1e6, "1e+06"), (123456.0, "123456"),
                                             (1234567.0, "1.234567e+06"), (0.0001, "0.0001"), (1e-5, "1e-05"),
                                             (-2.0, "-2"), (0.0, "0"), (100.25, "100.25")])
def test_go_float(value: float, want: str) -> None:
    assert go_float(value) == want


def test_go_json_and_go_sprint() -> None:
    value = {"b": [1, 1e6, 1e-5, 1e-7, 1e21, None, True, "<&>"], "a": {}}
    assert go_json(value) == '{"a":{},"b":[1,1000000,0.00001,1e-7,1e+21,null,true,"\\u003c\\u0026\\u003e"]}'
    assert go_sprint(value) == "map[a:map[] b:[1 1e+06 1e-05 1e-07 1e+21 <nil> true <&>]]"


@pytest.mark.parametrize(("expression", "want"), [(".a.b", "{.a.b}"), ("a.b", "{.a.b}"), ("{a.b}", "{.a.b}"),
                                                  ("{.a.b}", "{.a.b}"), ("", "")])
def test_relaxed(expression: str, want: str) -> None:
    assert relaxed(expression) == want


def test_quantities() -> None:
    assert [quantity(t) for t in ("100m", "2Gi", "1e3", "1.5k", "web", "1Zi")] == [
        Decimal("0.1"), 2 ** 31, 1000, 1500, None, None]


def names(items: list[dict]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


def item(name: str, value: object = "absent") -> dict:
    return {"metadata": {"name": name}, **({} if value == "absent" else {"v": value})}


SORTS = [
    ([item("a", "web-2"), item("b", "web-10"), item("c", "db")], ["c", "b", "a"]),  # bytes, not natural order
    ([item("a", "2Gi"), item("b", "500Mi"), item("c", "1"), item("d", "100m")], ["d", "c", "b", "a"]),
    ([item("a", 3), item("b"), item("c", None), item("d", 1)], ["b", "c", "d", "a"]),
    ([item("a", 2.5), item("b", 0.5)], ["b", "a"]),
]


@pytest.mark.parametrize(("items", "want"), SORTS)
def test_sort_by(items: list[dict], want: list[str]) -> None:
    assert names(sort_items(items, ".v")) == want


@pytest.mark.parametrize(("values", "message"), [([True, False], "unsortable type: bool"),
                                                 ([1, 1.5], "unsortable interface: interface"),
                                                 ([{}, {}], "unsortable type: map[string]interface {}")])
def test_sort_by_unsortable_values(values: list, message: str) -> None:
    with pytest.raises(JSONPathError, match=r"Field \{.v\} in \*unstructured.Unstructured is an unsortable type: "
                                            r"interface, err: " + message.replace("[", r"\[").replace("]", r"\]")):
        sort_items([item(str(i), v) for i, v in enumerate(values)], "v")


def test_sort_by_a_field_no_item_has() -> None:
    with pytest.raises(JSONPathError, match=r'couldn\'t find any field with path "\{.nope\}"'):
        sort_items([item("a", 1)], ".nope")


def test_custom_columns() -> None:
    columns = P.parse_custom_columns("NAME:.metadata.name,IMAGES:.spec.containers[*].image,X:{.spec.extra},A:.x")
    assert P.write_custom_columns(columns, LIST) == (
        "NAME    IMAGES        X                                                                  A\n"
        "web-2   nginx,envoy   map[big:1e+06 empty:[] flag:true map:map[] none:<nil> ratio:1.5]   <none>\n"
        "db      <none>        <none>                                                             <none>\n")
    assert P.write_custom_columns([("N", "{.kind}")], POD) == "N\nPod\n"  # one object: one row; minwidth 6


def test_custom_columns_file() -> None:
    assert P.parse_custom_columns_file("NAME   IMAGE\n.metadata.name  {.spec.containers[0].image}\n") == [
        ("NAME", "{.metadata.name}"), ("IMAGE", "{.spec.containers[0].image}")]
    with pytest.raises(JSONPathError, match="missing spec line"):
        P.parse_custom_columns_file("NAME IMAGE\n")
    with pytest.raises(JSONPathError, match=r"number of headers \(2\) and field specifications \(1\) don't match"):
        P.parse_custom_columns_file("NAME IMAGE\n.a\n")


@pytest.mark.parametrize(("spec", "message"), [
    ("", "custom-columns format specified but no custom columns given"),
    ("NAME", "unexpected custom-columns spec: NAME, expected <header>:<json-path-expr>"),
    ("A:{.a}{.b}", "unexpected path string, expected a 'name1.name2' or '.name1.name2' or '{name1.name2}' or "
                   "'{.name1.name2}'"),
])
def test_custom_columns_errors(spec: str, message: str) -> None:
    with pytest.raises(JSONPathError) as exc:
        P.parse_custom_columns(spec)
    assert str(exc.value) == message


def test_show_labels_is_the_last_column() -> None:
    table = P.write_table("ConfigMap", [{"metadata": {"name": "a", "labels": {"z": "1", "a": "2"}}},
                                        {"metadata": {"name": "b"}}], label_columns=["z"], show_labels=True)
    assert table.splitlines() == ["NAME   AGE         Z   LABELS", "a      <unknown>   1   a=2,z=1",
                                  "b      <unknown>       <none>"]
