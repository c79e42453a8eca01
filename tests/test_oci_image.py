"""WasmPlugin modules in OCI images, the pure decisions (meshway.runtime.oci_image, oci_auth and
the pull policy of meshway.runtime.wasm_modules), as truth tables after go-containerregistry's `name`
package and Istio's `pkg/wasm` (imagefetcher.go, cache.go, imagefetcher_test.go's realm table)."""
from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile

import pytest

from meshway.model import load_yaml
from meshway.model.extensions import WasmPlugin
from meshway.runtime.oci_auth import (Credentials, detect_unsafe_realm, find_credentials, parse_challenges,
                                      read_pull_secret)
from meshway.runtime.oci_image import (DOCKER_LAYER, DOCKER_MANIFEST, OCI_LAYER, OCI_MANIFEST, WASM_LAYER,
                                       ImageRef, detect_insecure, detect_local_registry, detect_wasm_binary,
                                       extract_plugin_wasm, find_platform_manifest, find_wasm_layer,
                                       parse_image_ref, parse_insecure_registries)
from meshway.runtime.wasm_modules import build_fetch_key, detect_reuse, find_expected_sha256

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, ref", [
    ("ghcr.io/org/plugin:1.0", ImageRef("ghcr.io", "org/plugin", "1.0")),
    ("oci://ghcr.io/org/plugin", ImageRef("ghcr.io", "org/plugin")),  # the tag defaults to latest
    ("127.0.0.1:5000/wasm/add:v2", ImageRef("127.0.0.1:5000", "wasm/add", "v2")),
    ("localhost/a/b", ImageRef("localhost", "a/b")),
    ("plugin", ImageRef("index.docker.io", "library/plugin")),  # Docker Hub, library/
    ("docker.io/org/plugin:x", ImageRef("index.docker.io", "org/plugin", "x")),
    ("org/plugin:x", ImageRef("index.docker.io", "org/plugin", "x")),  # no '.' or ':': a repository part
    (f"ghcr.io/org/plugin@{D}", ImageRef("ghcr.io", "org/plugin", None, D)),
    (f"ghcr.io/org/plugin:1.0@{D}", ImageRef("ghcr.io", "org/plugin", "1.0", D)),  # the digest wins
    ("reg:5000/org/plugin", ImageRef("reg:5000", "org/plugin")),
])
def test_references_as_go_containerregistry_parses_them(text: str, ref: ImageRef) -> None:
    assert parse_image_ref(text) == ref
    assert ref.identifier == (ref.digest or ref.tag or "latest")


@pytest.mark.parametrize("text, message", [
    ("ghcr.io/Org/plugin:1", "repository 'Org/plugin' may hold only lowercase"),
    ("ghcr.io/org/plugin:", "a tag name must follow the colon"),
    ("ghcr.io/org/plugin:a+b", "tag 'a+b' may hold only"),
    ("ghcr.io/org/plugin@sha256:abc", "the digest must be sha256:<64 hex characters>"),
])
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+").replace("(", r"\(")):
        parse_image_ref(text)


@pytest.mark.parametrize("registry, local", [
    ("127.0.0.1:5000", True), ("localhost:5000", True), ("reg.localhost:80", True), ("[::1]:5000", True),
    ("10.1.2.3:5000", True), ("192.168.0.9", True), ("172.20.0.1:443", True),
    ("localhost", False), ("ghcr.io", False), ("8.8.8.8:5000", False), ("172.32.0.1", False),
])
def test_which_registries_may_answer_in_plain_http(registry: str, local: bool) -> None:
    assert detect_local_registry(registry) is local


def _layer(media_type: str, n: int = 1) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{n:064x}", "size": 1}


@pytest.mark.parametrize("manifest, media_type, chosen", [
    ({"mediaType": DOCKER_MANIFEST, "layers": [_layer(DOCKER_LAYER, 1), _layer(DOCKER_LAYER, 2)]}, "",
     (2, "tar.gz", "docker")),  # a Docker image: its last layer
    ({"layers": [_layer(OCI_LAYER)]}, OCI_MANIFEST, (1, "tar.gz", "compat")),
    ({"layers": [_layer("application/vnd.module.wasm.config.v1+json", 1), _layer(WASM_LAYER, 2)]}, OCI_MANIFEST,
     (2, "raw", "oci")),  # the artifact: two layers, one the module
])
def test_the_layer_that_holds_the_module(manifest: dict, media_type: str, chosen: tuple) -> None:
    layer = find_wasm_layer(manifest, media_type)
    assert (int(layer.descriptor["digest"][7:], 16), layer.packing, layer.variant) == chosen


@pytest.mark.parametrize("manifest, message", [
    ({"mediaType": DOCKER_MANIFEST, "layers": []}, "number of layers must be greater than zero"),
    ({"mediaType": DOCKER_MANIFEST, "layers": [_layer(OCI_LAYER)]}, f"(expect {DOCKER_LAYER})"),
    ({"layers": [_layer(WASM_LAYER)]}, "number of layers must be 2 but got 1"),
    ({"layers": [_layer(OCI_LAYER + "x"), _layer("x")]}, f"could not find the layer of type {WASM_LAYER}"),
])
def test_images_that_hold_no_module(manifest: dict, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        find_wasm_layer(manifest, OCI_MANIFEST)
    assert message in str(exc.value)


def entry(digest: str, platform: dict | None) -> dict:
    return {"digest": f"sha256:{digest}", **({"platform": platform} if platform is not None else {})}


ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
AMD64 = {"os": "linux", "architecture": "amd64"}
WINDOWS = {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}
ARMV7 = {"os": "linux", "architecture": "arm", "variant": "v7"}


@pytest.mark.parametrize("entries, platform, chosen", [
    ([entry("1", ARM64), entry("2", AMD64)], ("linux", "amd64"), "2"),  # Istio's default platform
    ([entry("1", AMD64), entry("2", AMD64)], ("linux", "amd64"), "1"),  # the first that matches
    ([entry("1", WINDOWS), entry("2", {**AMD64, "variant": "v3"})], ("linux", "amd64"), "2"),  # any variant
    ([entry("1", ARM64), entry("2", None)], ("linux", "amd64"), "2"),  # no platform: linux/amd64
    ([entry("1", AMD64), entry("2", ARM64)], ("linux", "arm64"), "2"),  # another platform, when asked
    ([entry("1", None)], ("linux", "arm64"), None),
])
def test_which_manifest_of_an_index(entries: list, platform: tuple, chosen: str | None) -> None:
    """go-containerregistry's `childByPlatform` with the platform Istio's puller leaves at its default."""
    if chosen is None:
        with pytest.raises(ValueError):
            find_platform_manifest({"manifests": entries}, platform)
    else:
        assert find_platform_manifest({"manifests": entries}, platform)["digest"] == f"sha256:{chosen}"


@pytest.mark.parametrize("entries, message", [
    ([entry("1", ARM64), entry("2", WINDOWS), entry("3", ARMV7)],
     "the image index has no manifest for linux/amd64 (the platform Istio's puller takes); it has: "
     "linux/arm64/v8, windows/amd64, linux/arm/v7"),
    ([], "the image index has no manifest for linux/amd64 (the platform Istio's puller takes); it has: none"),
])
def test_an_index_without_the_platform_names_the_ones_it_has(entries: list, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        find_platform_manifest({"manifests": entries})
    assert str(exc.value) == message


@pytest.mark.parametrize("setting, listed", [
    ("", frozenset()),
    ("localhost:5000,docker-registry:5000", frozenset({"localhost:5000", "docker-registry:5000"})),  # Istio's example
    ("*", frozenset({"*"})),
    (" ghcr.io , ,127.0.0.1:5000,", frozenset({"ghcr.io", "127.0.0.1:5000"})),  # spaces and empty names dropped
])
def test_wasm_insecure_registries_is_read_as_istio_reads_it(setting: str, listed: frozenset) -> None:
    assert parse_insecure_registries(setting) == listed


@pytest.mark.parametrize("url, setting, insecure", [
    ("oci://registry.example:5000/wasm/a:v1", "registry.example:5000", True),
    ("oci://registry.example:5000/wasm/a:v1", "registry.example", False),  # the host as the URL names it, port too
    ("oci://registry.example/wasm/a:v1", "registry.example:443", False),
    ("oci://registry.example/wasm/a:v1", "other.example,registry.example", True),
    ("oci://ghcr.io/org/a:v1", "*", True),
    ("https://files.example/a.wasm", "files.example", True),  # Istio's HTTP fetcher too
    ("oci://ghcr.io/org/a:v1", "", False),
])
def test_which_fetches_skip_the_certificate_check(url: str, setting: str, insecure: bool) -> None:
    from urllib.parse import urlsplit
    assert detect_insecure(urlsplit(url).netloc, parse_insecure_registries(setting)) is insecure


def tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


def test_plugin_wasm_from_a_tar_gz_layer() -> None:
    module = b"\x00asm\x01\x00\x00\x00"
    assert extract_plugin_wasm(tar_gz({"README": b"x", "some/dir/plugin.wasm": module}), 1 << 20) == module
    with pytest.raises(ValueError, match="plugin.wasm not found in the archive"):
        extract_plugin_wasm(tar_gz({"other.wasm": module}), 1 << 20)
    with pytest.raises(ValueError, match="failed to parse layer as tar.gz"):
        extract_plugin_wasm(module, 1 << 20)
    with pytest.raises(ValueError, match="larger than"):
        extract_plugin_wasm(tar_gz({"plugin.wasm": module * 200_000}), 1 << 20)
    assert detect_wasm_binary(module) and not detect_wasm_binary(b"\x00asm") and not detect_wasm_binary(b"<html>")


def secret(config: dict | None, type_: str = "kubernetes.io/dockerconfigjson") -> dict:
    data = {} if config is None else {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}
    return {"type": type_, "data": data}


def test_pull_secrets_as_istiod_reads_them() -> None:
    config = {"auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"me:pw").decode()},
                        "https://index.docker.io/v1/": {"username": "hub", "password": "x"},
                        "https://ghcr.io": {"registrytoken": "tok"}}}
    raw = read_pull_secret(secret(config), "default", "regcred")
    assert find_credentials(raw, "127.0.0.1:5000") == Credentials("me", "pw")
    assert find_credentials(raw, "index.docker.io") == Credentials("hub", "x")
    assert find_credentials(raw, "ghcr.io") == Credentials(registry_token="tok")  # a URL key: its host
    assert find_credentials(raw, "quay.io") is None  # anonymous there
    for body, message in ((None, "secret not found"), (secret(config, "Opaque"), "type is 'Opaque'"),
                          (secret(None), "no .dockerconfigjson key")):
        with pytest.raises(ValueError, match=message):
            read_pull_secret(body, "default", "regcred")
    with pytest.raises(ValueError, match="not a docker config file"):
        find_credentials(b"[]", "ghcr.io")


def test_challenges() -> None:
    found = parse_challenges('Bearer realm="https://auth.io/token",service="reg.io",scope="repository:a:pull"')
    assert [(c.scheme, dict(c.params)) for c in found] == [
        ("bearer", {"realm": "https://auth.io/token", "service": "reg.io", "scope": "repository:a:pull"})]
    assert [c.scheme for c in parse_challenges('Basic realm="Registry Realm"')] == ["basic"]
    both = parse_challenges('Bearer realm="https://a.io/t", Basic realm="http://169.254.169.254/"')
    assert [(c.scheme, c.params["realm"]) for c in both] == [("bearer", "https://a.io/t"),
                                                              ("basic", "http://169.254.169.254/")]


@pytest.mark.parametrize("realm, refused", [  # Istio's TestValidateAllRealms, for Bearer realms
    ("https://auth.example.com/token", None), ("http://auth.example.com/token", None),
    ("http://169.254.169.254/latest/meta-data/", "private/loopback/link-local"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("http://localhost:8080/admin", "localhost"), ("http://127.0.0.5/api", "private/loopback/link-local"),
    ("file:///etc/passwd", "scheme 'file' not allowed"), ("gopher://internal:9000/_GET", "scheme 'gopher'"),
    ("http://10.0.0.1/token", "private"), ("http://172.16.0.1/token", "private"),
    ("http://192.168.1.1/token", "private"), ("http://[::1]/token", "loopback"), ("http://[fe80::1]/t", "link-local"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "private"), ("http://8.8.8.8/token", None),
])
def test_bearer_realms_istio_refuses(realm: str, refused: str | None) -> None:
    why = detect_unsafe_realm(realm)
    assert (why is None) if refused is None else (refused in (why or ""))


def plugin(url: str, extra: str = "") -> WasmPlugin:
    text = f"""apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: p, namespace: foo}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  url: {url}
  {extra}
"""
    return load_yaml(text, "wp.yaml")[0].obj  # type: ignore[return-value]


@pytest.mark.parametrize("url, policy, reused", [  # Istio's shouldIgnoreResourceVersion
    ("oci://reg.io/p:1.0", None, True),
    ("oci://reg.io/p:latest", None, False),  # an explicit :latest is pulled again when the plugin changes
    ("reg.io/p:latest", None, False),  # a bare reference is an image
    ("oci://reg.io/p", None, True),  # the implicit latest is not (Istio reads the URL as written)
    ("oci://reg.io/p:latest", "IfNotPresent", True),
    ("oci://reg.io/p:1.0", "Always", False),
    ("https://h/p.wasm", "Always", False),
    ("https://h/latest.wasm:latest", None, True),  # only images
])
def test_pull_policy(url: str, policy: str | None, reused: bool) -> None:
    p = plugin(url, f"imagePullPolicy: {policy}" if policy else "")
    assert detect_reuse(p) is reused
    changed = plugin(url, (f"imagePullPolicy: {policy}\n  " if policy else "") + "pluginConfig: {a: 1}")
    assert (build_fetch_key(p) == build_fetch_key(changed)) is reused


def test_the_sha256_a_module_must_have() -> None:
    assert find_expected_sha256(plugin("oci://reg.io/p:1", f"sha256: {'b' * 64}")) == "b" * 64
    assert find_expected_sha256(plugin(f"oci://reg.io/p@{D}")) == "a" * 64  # pinned by digest
    assert find_expected_sha256(plugin("oci://reg.io/p:1")) == ""
    assert build_fetch_key(plugin("oci://reg.io/p:1", "imagePullSecret: regcred"))[2] == ("foo", "regcred")


def test_the_kubernetes_backend_reads_pull_secrets_by_name() -> None:
    from meshway.kube.backend import KubeBackend
    from meshway.kube.client import ApiError

    class Client:
        def get(self, path: str) -> dict:
            if path == "/api/v1/namespaces/foo/secrets/regcred":
                return secret({"auths": {}})
            status = 403 if path.endswith("/forbidden") else 404
            raise ApiError(status, "Forbidden" if status == 403 else "NotFound", "no", "GET", path)

    class Source:
        def subscribe(self):
            return None

    backend = KubeBackend(Client(), Source())  # type: ignore[arg-type]
    assert backend.read_secret("foo", "regcred") == secret({"auths": {}})
    assert backend.read_secret("foo", "missing") is None
    with pytest.raises(ValueError, match="imagePullSecret foo/forbidden: GET /api/v1/namespaces/foo/secrets/forbidden: "
                                         "403 Forbidden: no"):
        backend.read_secret("foo", "forbidden")


@pytest.mark.parametrize("args, env, listed", [
    ([], {"WASM_INSECURE_REGISTRIES": "registry.example:5000, ghcr.io"}, {"registry.example:5000", "ghcr.io"}),
    (["--wasm-insecure-registries", "*"], {}, {"*"}),
    ([], {}, set()),
])
def test_the_control_plane_takes_wasm_insecure_registries_from_its_environment(tmp_path, monkeypatch, args, env,
                                                                                listed) -> None:
    """`meshway controlplane` reads Istio's variable (as istio-agent does) and hands the set to the
    control plane, which gives it to the module fetcher."""
    from click.testing import CliRunner

    import meshway.runtime.controlplane as runtime
    from meshway.cli import controlplane  # noqa: F401  (registers the command)
    from meshway.cli.main import cli

    seen = {}

    class Stop(Exception):
        pass

    def fake(*a, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(runtime, "ControlPlane", fake)
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "controlplane", *args], env=env)
    assert "internal error (Stop" in result.output, result.output  # stopped where the control plane starts
    assert seen["wasm_insecure_registries"] == frozenset(listed)
