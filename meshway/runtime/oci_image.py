"""Wasm modules in OCI images, the decisions only (no I/O), as Istio's agent makes them with
go-containerregistry (`pkg/wasm/imagefetcher.go`, `cache.go`; `pkg/name`, `pkg/v1/remote`):

- the reference: `[registry/]repository[:tag][@sha256:digest]`, the registry defaulting to Docker
  Hub (`index.docker.io`, one-part names under `library/`) and the tag to `latest`;
- which manifest of an index: the first whose platform matches go-containerregistry's default,
  `linux/amd64` (Istio's puller passes no platform, so on every machine; an entry without a
  platform counts as linux/amd64); which layer holds the module, in Istio's order: a Docker
  image manifest's last layer, a gzipped tar (`application/vnd.docker.image.rootfs.diff.tar.gzip`);
  otherwise an OCI manifest's last layer if it is `application/vnd.oci.image.layer.v1.tar+gzip`
  (the "compat" variant); otherwise exactly two layers, one of them the raw module
  (`application/vnd.module.wasm.content.layer.v1+wasm`); from a tar, the file whose base name is `plugin.wasm`;
- plain HTTP: go-containerregistry falls back to it for localhost, `*.localhost`, 127.0.0.1, ::1
  and RFC 1918 addresses, and Istio for any registry whose TLS port answers in plain HTTP;
- `WASM_INSECURE_REGISTRIES` (Istio's agent setting): comma-separated `host[:port]` as the URL
  names them, `*` for all; their TLS certificates are not checked.
Credentials and challenges are `oci_auth`'s."""
from __future__ import annotations

import gzip
import io
import ipaddress
import re
import tarfile
from dataclasses import dataclass
from typing import Any

Body = dict[str, Any]
DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_TAG = "latest"
REPOSITORY = re.compile(r"^[a-z0-9_./-]{1,255}$")
TAG = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
PLUGIN_FILE = "plugin.wasm"
DEFAULT_PLATFORM = ("linux", "amd64")  # go-containerregistry's remote.defaultPlatform (os, architecture)
WASM_MAGIC = b"\x00asm"
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")  # Go's net.IP.IsPrivate


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str  # as sent to the registry (`library/` added on Docker Hub)
    tag: str | None = None
    digest: str | None = None  # sha256:<hex>; wins over the tag

    @property
    def identifier(self) -> str:
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.identifier}")


def parse_image_ref(text: str) -> ImageRef:
    """go-containerregistry's `name.ParseReference` (a tag, else a digest), on what follows `oci://`."""
    if text.startswith("oci://"):
        text = text[len("oci://"):]
    base, _, digest = text.partition("@")
    if "@" in text and not DIGEST.match(digest):
        raise ValueError(f"could not parse reference {text!r}: the digest must be sha256:<64 hex characters>")
    tag = None
    head, sep, last = base.rpartition(":")
    if sep and "/" not in last:
        if not last:
            raise ValueError(f"could not parse reference {text!r}: a tag name must follow the colon")
        if not TAG.match(last):
            raise ValueError(f"could not parse reference {text!r}: tag {last!r} may hold only letters, digits, _ . -")
        base, tag = head, last
    registry, repository = "", base
    first, slash, rest = base.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first):
        registry, repository = first, rest
    if not REPOSITORY.match(repository):
        raise ValueError(f"could not parse reference {text!r}: repository {repository!r} may hold only "
                         "lowercase letters, digits and _ . / -")
    registry = registry or DEFAULT_REGISTRY
    if registry == "docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    return ImageRef(registry, repository, tag, digest or None)


def detect_local_registry(registry: str) -> bool:
    """Whether go-containerregistry also tries plain HTTP there (`name.Registry.Scheme`)."""
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry.strip("[]")
    if registry.startswith("localhost:") or re.match(r".*\.localhost(:\d{1,5})?$", registry):
        return True
    if "127.0.0.1" in registry or "::1" in registry:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.version == 4 and any(ip in ipaddress.ip_network(n) for n in PRIVATE[:3])


def describe_platform(entry: Body) -> str:
    """An index entry's platform as `os/architecture[/variant]` (none given: linux/amd64)."""
    platform = entry.get("platform") or {"os": DEFAULT_PLATFORM[0], "architecture": DEFAULT_PLATFORM[1]}
    parts = (platform.get("os") or "", platform.get("architecture") or "", platform.get("variant") or "")
    return "/".join(p for p in parts if p)


def find_platform_manifest(index: Body, platform: tuple[str, str] = DEFAULT_PLATFORM) -> Body:
    """The index entry go-containerregistry's `desc.Image()` picks (`childByPlatform`): the first whose
    os and architecture are `platform`'s (an entry without a platform is linux/amd64)."""
    entries = index.get("manifests") or []
    for entry in entries:
        given = entry.get("platform") or {"os": DEFAULT_PLATFORM[0], "architecture": DEFAULT_PLATFORM[1]}
        if (given.get("os"), given.get("architecture")) == platform:
            return entry
    available = ", ".join(describe_platform(e) for e in entries) or "none"
    raise ValueError(f"the image index has no manifest for {'/'.join(platform)} (the platform Istio's "
                     f"puller takes); it has: {available}")


def parse_insecure_registries(text: str) -> frozenset[str]:
    """Istio's WASM_INSECURE_REGISTRIES: comma-separated hosts (`host:port` when the URL has a port),
    `*` for all. Istio splits on commas only; spaces around a name are dropped here too."""
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def detect_insecure(host: str, registries: frozenset[str]) -> bool:
    """Istio's `allowInsecure(u.Host)`: the URL's host (with its port) listed, or `*`."""
    return "*" in registries or host in registries


@dataclass(frozen=True)
class WasmLayer:
    """The layer holding the module and how: `tar.gz` (plugin.wasm inside) or `raw` (the module)."""

    descriptor: Body
    packing: str
    variant: str  # docker, compat (OCI tar+gzip) or oci (artifact)


def find_wasm_layer(manifest: Body, media_type: str) -> WasmLayer:
    """Istio's choice of layer (`PrepareFetch`), or ValueError with every variant's reason."""
    layers = manifest.get("layers") or []
    if (manifest.get("mediaType") or media_type) == DOCKER_MANIFEST:
        if not layers:
            raise ValueError("invalid Docker image: number of layers must be greater than zero")
        last = layers[-1]
        if last.get("mediaType") != DOCKER_LAYER:
            raise ValueError(f"invalid Docker image: layer media type {last.get('mediaType')} (expect {DOCKER_LAYER})")
        return WasmLayer(last, "tar.gz", "docker")
    if layers and layers[-1].get("mediaType") == OCI_LAYER:
        return WasmLayer(layers[-1], "tar.gz", "compat")
    compat = (f"invalid media type {layers[-1].get('mediaType')} (expect {OCI_LAYER})" if layers
              else "number of layers must be greater than zero")
    wasm = [layer for layer in layers if layer.get("mediaType") == WASM_LAYER]
    if len(layers) == 2 and wasm:
        return WasmLayer(wasm[0], "raw", "oci")
    oci = (f"number of layers must be 2 but got {len(layers)}" if len(layers) != 2
           else f"could not find the layer of type {WASM_LAYER}")
    raise ValueError(f"the image is in no Wasm image format: not the compat variant ({compat}), "
                     f"not the oci variant ({oci})")


def extract_plugin_wasm(blob: bytes, limit: int) -> bytes:
    """`plugin.wasm` (by base name, the first one) from a gzipped tar layer."""
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
            for member in tar:
                if member.name.rsplit("/", 1)[-1] == PLUGIN_FILE and member.isfile():
                    if member.size > limit:
                        raise ValueError(f"{PLUGIN_FILE} is larger than {limit >> 20} MiB")
                    f = tar.extractfile(member)
                    return f.read() if f else b""
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise ValueError(f"failed to parse layer as tar.gz: {exc}") from None
    raise ValueError(f"{PLUGIN_FILE} not found in the archive")


def detect_wasm_binary(data: bytes) -> bool:
    """Istio's `isValidWasmBinary`: the magic number and a version (8 bytes)."""
    return len(data) >= 8 and data[:4] == WASM_MAGIC
