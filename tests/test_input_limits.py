"""Bounded input, as Kubernetes applies it: YAML alias expansion (go-yaml's ratio), nesting depth,
3 MiB per object, 256 KiB of annotations, binary input. Every refusal is one line naming the file
and document, and leaves the store byte-for-byte as it was."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshway.cli.main import cli
from meshway.model import InputError, load_yaml
from meshway.model.limits import allowed_alias_ratio, check_yaml_events, LimitError
from meshway.store import Store

import yaml

ENVOYFILTER = """apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata:
  name: lol
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: MERGE
      value:
{value}
"""


def laughs(levels: int, fanout: int = 9, indent: str = "        ") -> str:
    lines = [f"{indent}l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    return "\n".join(lines)


BOMB = ENVOYFILTER.format(value=laughs(9))


def run(state: Path, *args: str, input: bytes | str | None = None):
    return CliRunner().invoke(cli, ["--state-dir", str(state), *args], input=input)


def dump(state: Path):
    store = Store(state)
    try:
        return store.dump()
    finally:
        store.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    s = tmp_path / "state"
    assert run(s, "get", "ns").exit_code == 0  # bootstrap the store
    return s


def refused(state: Path, tmp_path: Path, name: str, data: bytes | str, expected: str) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    before = dump(state)
    r = run(state, "apply", "-f", str(path))
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(f"error: {path}") and expected in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert dump(state) == before
    return r.stderr


def test_alias_bomb_is_refused_before_it_expands(state: Path, tmp_path: Path) -> None:
    assert len(BOMB) < 1000  # 9 levels of 9: 387 million scalars once expanded
    start = time.monotonic()
    err = refused(state, tmp_path, "bomb.yaml", BOMB, "document 1: yaml: document contains excessive aliasing")
    # Counting is linear in the document's events (milliseconds); the bound is loose on purpose.
    assert time.monotonic() - start < 5, err


def test_alias_bomb_in_a_later_document_names_it(state: Path, tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: fine}\n---\n" + BOMB
    refused(state, tmp_path, "two.yaml", text, "document 2: yaml: document contains excessive aliasing")


def test_ordinary_aliases_are_accepted(state: Path, tmp_path: Path) -> None:
    # Three levels of ten (go-yaml accepts it: 1,111 aliased nodes, under its 99% share).
    path = tmp_path / "ok.yaml"
    path.write_text(ENVOYFILTER.format(value=laughs(2, fanout=10)))
    r = run(state, "apply", "-f", str(path))
    assert r.exit_code == 0 and "envoyfilter.networking.istio.io/lol created" in r.stdout, r.output


def test_alias_ratio_matches_go_yaml() -> None:
    """gopkg.in/yaml.v2 v2.4.0 (checked with go run on these documents) accepts 3 levels of 10 and
    refuses 4."""
    def decode(levels: int) -> None:
        text = "\n".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * 10) + "]"
                         for i in range(levels))
        check_yaml_events(yaml.parse(text))
    decode(3)
    with pytest.raises(LimitError, match="excessive aliasing"):
        decode(4)
    assert allowed_alias_ratio(1000) == 0.99 and allowed_alias_ratio(4_000_000) == 0.10
    assert abs(allowed_alias_ratio(2_200_000) - 0.545) < 1e-9


def test_recursive_anchor_is_refused(state: Path, tmp_path: Path) -> None:
    refused(state, tmp_path, "self.yaml", ENVOYFILTER.format(value="        a: &a [x, *a]"),
            "yaml: anchor 'a' value contains itself")


def test_deep_nesting_is_refused(state: Path, tmp_path: Path) -> None:
    deep = "        a: " + "[" * 150 + "]" * 150
    refused(state, tmp_path, "deep.yaml", ENVOYFILTER.format(value=deep), "exceeded max depth of 100")
    # Depth reached through an alias counts too.
    through = "        a: &a " + "[" * 60 + "]" * 60 + "\n        b: " + "[" * 60 + "*a" + "]" * 60
    refused(state, tmp_path, "deep-alias.yaml", ENVOYFILTER.format(value=through), "exceeded max depth of 100")


def test_object_over_3_mib_is_refused(state: Path, tmp_path: Path) -> None:
    big = "x" * (3 * 1024 * 1024)
    text = ENVOYFILTER.format(value=f"        blob: {big}")
    err = refused(state, tmp_path, "big.yaml", text, "Request entity too large: limit is 3145728")
    assert "document 1 (EnvoyFilter default/lol)" in err


def test_telemetry_free_form_fields_are_bounded(state: Path, tmp_path: Path) -> None:
    text = ("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec:\n"
            "  accessLogging:\n  - providers: [{name: " + "x" * (3 * 1024 * 1024 + 10) + "}]\n")
    refused(state, tmp_path, "tel.yaml", text, "Request entity too large: limit is 3145728")


def test_annotations_over_256_kib_are_refused(state: Path, tmp_path: Path) -> None:
    text = ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n  annotations:\n"
            f"    a: {'y' * (1024 * 1024)}\n")
    err = refused(state, tmp_path, "ann.yaml", text,
                  "metadata.annotations: Too long: must have at most 262144 bytes")
    assert "document 1 (Namespace big)" in err


def test_annotations_counted_with_the_last_applied_record(state: Path, tmp_path: Path) -> None:
    """160 KiB is under the bound, but kubectl apply records the object in an annotation too."""
    text = ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n  annotations:\n"
            f"    a: {'y' * (160 * 1024)}\n")
    path = tmp_path / "ann.yaml"
    path.write_text(text)
    before = dump(state)
    r = run(state, "apply", "-f", str(path))
    assert r.exit_code == 1
    assert r.stderr == (f'Error from server (Invalid): error when creating "{path}": Namespace "big" is invalid: '
                        "metadata.annotations: Too long: must have at most 262144 bytes\n")
    assert dump(state) == before


def test_annotations_at_the_bound_are_accepted(state: Path, tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ok\n  annotations:\n"
                    f"    a: {'y' * (100 * 1024)}\n")
    assert run(state, "apply", "-f", str(path)).exit_code == 0


@pytest.mark.parametrize("data,expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "invalid UTF-8 byte 0x89 at offset 0"),
    (b"apiVersion: v1\nkind: \xff\xfe\n", "invalid UTF-8 byte 0xff at offset 21"),
    (b"\x00\x01\x02\x03", "unacceptable character #x0000"),
    (b"apiVersion: v1\x07\n", "unacceptable character #x0007"),
], ids=["png", "latin1", "nul", "control"])
def test_binary_input_names_the_file(state: Path, tmp_path: Path, data: bytes, expected: str) -> None:
    refused(state, tmp_path, "garbage.yaml", data, expected)


def test_binary_stdin_is_one_line(state: Path) -> None:
    r = run(state, "apply", "-f", "-", input=b"\xc3\x28garbage")
    assert r.exit_code == 1 and r.stderr.startswith("error: <stdin>: ") and "invalid UTF-8 byte 0xc3" in r.stderr


def test_utf16_with_bom_is_read() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: u}\n"
    assert [m.obj.name for m in load_yaml(text.encode("utf-16"), "u.yaml")] == ["u"]


def test_unreadable_path_is_one_line(state: Path, tmp_path: Path) -> None:
    r = run(state, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 1 and r.stderr == f"error: {tmp_path / 'nope.yaml'}: the path does not exist\n"


def test_load_yaml_raises_input_error_for_each_bound() -> None:
    for text in (BOMB, ENVOYFILTER.format(value="        a: " + "{b: " * 120 + "c" + "}" * 120)):
        with pytest.raises(InputError):
            load_yaml(text, "x.yaml")


def test_store_refuses_an_object_over_3_mib_whatever_the_caller(state: Path) -> None:
    """The store's own bound (etcd's, as the API server applies it), for writes that do not come
    from a file: nothing is written."""
    from meshway.store.errors import RequestEntityTooLarge

    store = Store(state)
    try:
        before = store.dump()
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "huge", "uid": "u"},
                "spec": {"x": "y" * (3 * 1024 * 1024)}}
        with pytest.raises(RequestEntityTooLarge) as exc:
            with store.db.write() as txn:
                txn.put("Namespace", body, created=True)
        assert str(exc.value) == ('Error from server (RequestEntityTooLarge): Namespace "huge": '
                                  "Request entity too large: limit is 3145728")
        assert store.dump() == before
    finally:
        store.close()
