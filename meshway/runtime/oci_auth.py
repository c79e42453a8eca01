"""Registry credentials for Wasm images, the decisions only (no I/O), as Istio reads them: an
`imagePullSecret` is a `kubernetes.io/dockerconfigjson` Secret in the plugin's namespace (istiod's
`GetDockerCredential`); its docker config file gives the registry's entry (`auths` by host, Docker
Hub under its v1 URL; `auth` = base64 of user:password, or username/password, identitytoken,
registrytoken); a registry's `WWW-Authenticate` challenge says how to use it (Basic, or Bearer with
a token from the realm). A Bearer realm on localhost or on a private, loopback or link-local address
is refused (Istio's `validateRealmURL`, its guard against server-side request forgery)."""
from __future__ import annotations

import base64
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from .oci_image import DEFAULT_REGISTRY, PRIVATE, Body, ImageRef

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
PULL_SECRET_TYPE = "kubernetes.io/dockerconfigjson"
PULL_SECRET_KEY = ".dockerconfigjson"

@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token for the realm
    registry_token: str = ""  # a Bearer token sent as it is


def read_pull_secret(secret: Body | None, namespace: str, name: str) -> bytes:
    """The docker config in an imagePullSecret, with istiod's reasons why not (`GetDockerCredential`)."""
    if secret is None:
        raise ValueError(f"imagePullSecret {namespace}/{name}: secret not found")
    if secret.get("type") != PULL_SECRET_TYPE:
        raise ValueError(f"imagePullSecret {namespace}/{name}: type is {secret.get('type')!r}, not {PULL_SECRET_TYPE}")
    data = (secret.get("data") or {}).get(PULL_SECRET_KEY)
    if data is None:
        raise ValueError(f"imagePullSecret {namespace}/{name}: no {PULL_SECRET_KEY} key")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise ValueError(f"imagePullSecret {namespace}/{name}: {PULL_SECRET_KEY} is not base64") from None


def _auth_host(key: str) -> str:
    """docker's `ConvertToHostname`: the host of an `auths` key that may be a URL."""
    for prefix in ("http://", "https://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.split("/", 1)[0]


def find_credentials(docker_config: bytes, registry: str) -> Credentials | None:
    """The config's entry for this registry (Docker Hub's key is its v1 URL); None: anonymous."""
    try:
        auths = json.loads(docker_config).get("auths")
    except (ValueError, AttributeError):
        raise ValueError("the pull secret is not a docker config file (JSON with `auths`)") from None
    if not isinstance(auths, Mapping):
        raise ValueError("the pull secret is not a docker config file (JSON with `auths`)")
    want = DOCKER_HUB_AUTH_KEY if registry == DEFAULT_REGISTRY else registry
    entry = auths.get(want)
    if entry is None:
        entry = next((v for k, v in auths.items() if _auth_host(k) == _auth_host(want)), None)
    if not isinstance(entry, Mapping):
        return None
    username, password = entry.get("username") or "", entry.get("password") or ""
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except ValueError:
            raise ValueError(f"the pull secret's auth for {want} is not base64 of user:password") from None
    found = Credentials(username, password, entry.get("identitytoken") or "", entry.get("registrytoken") or "")
    return found if found != Credentials() else None


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: basic, bearer
    params: Mapping[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """`WWW-Authenticate`: `Bearer realm="…",service="…",scope="…"` (and more schemes, comma-joined)."""
    found: list[Challenge] = []
    for m in re.finditer(r'([A-Za-z][\w-]*)(?:\s+|$)((?:[\w-]+=(?:"[^"]*"|[^,\s]*)\s*,?\s*)*)', header):
        params = {k.lower(): v.strip('"') for k, v in re.findall(r'([\w-]+)=("[^"]*"|[^,\s]*)', m.group(2))}
        found.append(Challenge(m.group(1).lower(), params))
    return found


def detect_unsafe_realm(realm: str) -> str | None:
    """Why Istio refuses to fetch a token from this realm (`validateRealmURL`), None when it may."""
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https"):
        return f"realm scheme {parts.scheme!r} not allowed"
    host = parts.hostname or ""
    if not host:
        return "realm missing host"
    if host == "metadata.google.internal":
        return "realm targets cloud metadata service"
    if host == "localhost":
        return "realm targets localhost"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or any(ip in ipaddress.ip_network(n) for n in PRIVATE if
                                                   ipaddress.ip_network(n).version == ip.version):
        return "realm targets private/loopback/link-local IP"
    return None


def build_basic_auth(credentials: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()


def build_token_query(challenge: Challenge, ref: ImageRef) -> dict[str, str]:
    """The token request's query: the challenge's service and this repository's pull scope."""
    query = {"scope": f"repository:{ref.repository}:pull"}
    if challenge.params.get("service"):
        query["service"] = challenge.params["service"]
    return query
