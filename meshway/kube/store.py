"""The CLI's store on a Kubernetes API: the part of the embedded `Store`'s interface that `meshway
get|apply|label|delete|explain|waypoint|analyze` use (get, list, apply, delete, label, snapshot),
with the same results and the same one-line errors, so a command prints the same whichever store
it runs on.

Two rings. The decisions are pure and table-tested: `format_selector` (a LabelSelector in the API's
query syntax), `decide_apply_action` (created / configured / unchanged from the resourceVersions
before and after), `plan_labels` (kubectl label's `--overwrite` rule, as `Store.label` applies it),
`detect_missing_type`, `detect_lease_held`, `describe_api_error` (an `ApiError` as the error the
embedded store raises, or one line naming the object). `KubeStore` is the thin shell over
`KubeClient`.

How writes map:
- apply: every document was validated locally by the caller (`load_yaml`, as for the embedded
  store). Then, before anything is written, the live objects are read, each document's namespace
  must exist (or be created earlier in the same apply, as in the embedded store), and every
  document is server-side applied with `dryRun=All`, so that what the API server would refuse is
  refused before the first write (all or nothing, short of a concurrent writer). Then each is
  server-side applied with field manager `meshway` and `force=true`: like the embedded store's
  (and kubectl's client-side) apply, the last applier wins, never a field-ownership conflict.
- delete: every target is read first (a missing one fails the command before anything is deleted,
  as in the embedded store), deleted with its uid as precondition (background propagation, as
  kubectl), and waited for until it is gone (as `kubectl delete` waits).
- label: kubectl's rule is checked on every target before the first write; then a JSON merge patch
  of `metadata.labels` carrying the resourceVersion read (optimistic concurrency).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from ..model.registry import BY_KIND, KindInfo, UnknownKind
from ..store.cluster import Result, _not_found as not_found
from ..store.errors import Invalid, LabelConflict, NotFound, StoreError
from ..store.objects import user_view
from .client import APPLY_PATCH, MERGE_PATCH, ApiError, KubeClient, resource_path
from .leader import LEASE_NAME, find_live_holder, lease_path
from .project import project

if TYPE_CHECKING:
    from ..model.meta import LabelSelector
    from ..model.parse import Manifest

Body = dict[str, Any]
FIELD_MANAGER = "meshway"  # as `kubectl apply --server-side` applies as `kubectl`
DELETE_TIMEOUT = 60.0
MISSING_TYPE = "the server could not find the requested resource"
START_HINT = "`meshway controlplane --kubeconfig FILE` starts it"
NAMESPACE = BY_KIND["Namespace"]
LEASE = KindInfo("Lease", "coordination.k8s.io", ("v1",), "leases", (), True, "core")


# -- errors ---------------------------------------------------------------------------------------
class ApiRefused(StoreError):
    """The API server refused a request: `Error from server (REASON): message`, as kubectl prints it."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason or "BadRequest"


class ClientError(StoreError):
    """A failure kubectl reports itself (no answer, a kind the server does not serve): `error: ...`."""

    def __str__(self) -> str:
        return f"error: {self.args[0]}"


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def detect_missing_type(exc: ApiError) -> bool:
    """A 404 for the resource type itself (its CRD is not installed), not for an object."""
    return exc.status == 404 and exc.message.startswith(MISSING_TYPE)


def missing_type_error(info: KindInfo) -> UnknownKind:
    return UnknownKind(f'the server doesn\'t have a resource type "{info.plural}" (for the Gateway API and '
                       "Istio kinds: meshway install)")


def describe_api_error(exc: ApiError, info: KindInfo, name: str, doing: str = "") -> StoreError:
    """The error the embedded store raises for the same refusal (NotFound's message is the same), else
    one line naming the object. `doing`: `error when applying "FILE"`, as kubectl prefixes it."""
    prefix = f"{doing}: " if doing else ""
    if exc.status == 404 and not detect_missing_type(exc):
        return NotFound(f"{prefix}{one_line(exc.message)}") if doing else not_found(info, name)
    if exc.status == 404:
        return ClientError(f"{prefix}no matches for kind \"{info.kind}\" in group \"{info.group}\": ensure CRDs "
                           "are installed first (meshway install)")
    message = one_line(exc.message) or f"{exc.status} {exc.reason}".strip()
    if exc.status in (409, 422) and f'"{name}"' not in message:  # name the object when the API did not
        message = f"{info.qualified}/{name}: {message}"
    if exc.status == 422:
        return Invalid(prefix + message)
    return ApiRefused(exc.reason or str(exc.status), prefix + message)


def describe_transport_error(host: str, exc: BaseException) -> ClientError:
    while getattr(exc, "reason", None) is not None and isinstance(exc.reason, BaseException):
        exc = exc.reason  # urllib3's MaxRetryError -> NewConnectionError -> the OS error
    text = str(exc).split("): ", 1)[-1] if "Connection(" in str(exc) else str(exc)
    return ClientError(f"cannot reach the Kubernetes API at {host}: "
                       f"{text.removeprefix('Failed to establish a new connection: ')}")


# -- pure decisions -------------------------------------------------------------------------------
def format_selector(selector: LabelSelector) -> str:
    """The API's `labelSelector` query for a parsed selector (`a=b,c in (x,y),d notin (z),e,!f`)."""
    parts = [f"{k}={v}" for k, v in selector.matchLabels.items()]
    for r in selector.matchExpressions:
        if r.operator in ("In", "NotIn"):
            parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
        else:
            parts.append(r.key if r.operator == "Exists" else f"!{r.key}")
    return ",".join(parts)


def decide_apply_action(live: Body | None, applied: Body) -> str:
    """kubectl's word for one applied object: the resourceVersion moves only when something changed."""
    if live is None:
        return "created"
    before = (live.get("metadata") or {}).get("resourceVersion")
    return "unchanged" if before == (applied.get("metadata") or {}).get("resourceVersion") else "configured"


def plan_labels(labels: dict[str, str], set_labels: dict[str, str], remove: list[str],
                overwrite: bool) -> dict[str, str | None] | None:
    """The merge patch of `metadata.labels` for `kubectl label` (None: nothing changes); the same rule
    as `Store.label`: set, then remove; a changed value without --overwrite raises LabelConflict."""
    new = dict(labels)
    for key, value in set_labels.items():
        if key in new and new[key] != value and not overwrite:
            raise LabelConflict(f"'{key}' already has a value ({new[key]}), and --overwrite is false")
        new[key] = value
    for key in remove:
        new.pop(key, None)
    patch: dict[str, str | None] = {k: v for k, v in new.items() if labels.get(k) != v}
    patch.update({k: None for k in labels if k not in new})
    return patch or None


def detect_lease_held(lease: Body | None, now: datetime) -> bool:
    """A control plane leads: the Lease has a holder that renewed it within its duration."""
    return bool(find_live_holder(lease, now))


def object_path(body: Body, info: KindInfo) -> str:
    """The object's URL in the version the document names (server-side apply needs the same one)."""
    group, _, version = body["apiVersion"].rpartition("/")
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    meta = body["metadata"]
    ns = f"/namespaces/{meta['namespace']}" if info.namespaced else ""
    return f"{base}{ns}/{info.plural}/{meta['name']}"


def as_output(info: KindInfo, body: Body) -> Body:
    """What kubectl prints of an object: managedFields hidden, apiVersion and kind always set (list
    items of built-in kinds come without them)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    rest = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
    return {"apiVersion": body.get("apiVersion") or info.api_versions()[0], "kind": body.get("kind") or info.kind,
            "metadata": meta, **rest}


# -- the shell ------------------------------------------------------------------------------------
@dataclass
class _Planned:
    manifest: Manifest
    path: str
    body: Body
    live: Body | None


class KubeStore:
    """`Store`'s CLI interface on a Kubernetes API server."""

    start_hint = START_HINT

    def __init__(self, client: KubeClient, delete_timeout: float = DELETE_TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.client, self.delete_timeout, self.sleep, self.clock = client, delete_timeout, sleep, clock

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None) -> "KubeStore":
        try:
            return cls(KubeClient.connect(kubeconfig, context))
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:  # the kubernetes library's ConfigException: an unusable kubeconfig or context
            if type(exc).__name__ != "ConfigException":
                raise
            raise ValueError(f"kubeconfig: {one_line(str(exc))}") from None

    def close(self) -> None:
        self.client.close()

    def _call(self, fn: Callable[[], Any], info: KindInfo, name: str, doing: str = "") -> Any:
        """`fn()`, with every refusal as the embedded store's error and a lost connection as one line."""
        import urllib3

        try:
            return fn()
        except ApiError as exc:
            if exc.status == 0:
                raise ClientError(f"cannot reach the Kubernetes API at {self.client.host}: "
                                  f"{one_line(exc.message) or exc.reason or 'no answer'}") from None
            if detect_missing_type(exc) and not doing:
                raise missing_type_error(info) from None
            raise describe_api_error(exc, info, name, doing) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise describe_transport_error(self.client.host, exc) from None

    def _read(self, info: KindInfo, path: str, name: str) -> Body | None:
        """The live object, None when it does not exist."""
        try:
            return self._call(lambda: self.client.get(path), info, name)
        except NotFound:
            return None

    # -- reads ------------------------------------------------------------------------------------
    def get(self, info: KindInfo, namespace: str, name: str) -> Body:
        body = self._call(lambda: self.client.get(resource_path(info, namespace, name)), info, name)
        return as_output(info, body)

    def list(self, info: KindInfo, namespace: str | None = None, selector: LabelSelector | None = None) -> list[Body]:
        query = {"labelSelector": format_selector(selector)} if selector is not None else {}
        path = resource_path(info, namespace if info.namespaced else None)
        pages = self._call(lambda: list(self.client.list(path, **query)), info, "")
        items = [as_output(info, b) for page in pages for b in page.get("items") or ()]
        if selector is not None:  # the same matcher as the embedded store, whatever the server did
            from ..store.cluster import selector_matches

            items = [b for b in items if selector_matches(selector, b["metadata"].get("labels") or {})]
        return sorted(items, key=lambda b: (b["metadata"].get("namespace") or "", b["metadata"]["name"]))

    def snapshot(self, kinds: tuple[str, ...]) -> tuple[int, dict[str, list[Body]]]:
        """(0, {kind: every object, projected as the control plane keeps them}); a kind the server does
        not serve (its CRD not installed) has no objects."""
        out: dict[str, list[Body]] = {}
        for kind in kinds:
            try:
                out[kind] = [project(kind, b) for b in self.list(BY_KIND[kind], None)]
            except UnknownKind:
                out[kind] = []
        return 0, out

    def controlplane_running(self) -> bool:
        """A meshway control plane holds its Lease (`meshway controlplane --kubeconfig`); a Lease the
        user may not read is taken as held (then statuses are shown as the API has them)."""
        try:
            lease = self._call(lambda: self.client.get(lease_path(name=LEASE_NAME)), LEASE, LEASE_NAME)
        except NotFound:
            return False
        except ApiRefused:
            return True
        return detect_lease_held(lease, datetime.now(timezone.utc))

    # -- writes -----------------------------------------------------------------------------------
    def apply(self, manifests: list[Manifest]) -> list[Result]:
        """Server-side apply every manifest; everything the server would refuse is refused (by a dry
        run) before the first write."""
        plans, present, created_ns = [], {}, set()
        for m in manifests:
            ns = m.obj.namespace
            doing = f'error when creating "{m.source}"'
            if m.info.namespaced and ns not in created_ns:
                if ns not in present:
                    present[ns] = self._read(NAMESPACE, resource_path(NAMESPACE, None, ns), ns) is not None
                if not present[ns]:
                    raise NotFound(f'{doing}: namespaces "{ns}" not found')
            body = user_view(m.body)
            path = object_path(body, m.info)
            live = self._call(lambda: self._get_or_none(path), m.info, m.obj.name, doing)
            plans.append(_Planned(m, path, body, live))
            if m.info.kind == "Namespace" and live is None:
                created_ns.add(m.obj.name)
        for p in plans:  # the dry run: nothing is written unless the server would take every document
            if p.manifest.info.namespaced and p.manifest.obj.namespace in created_ns:
                continue  # its namespace does not exist yet: the real apply creates it first
            self._apply_one(p, dry_run=True)
        return [Result(p.manifest.info, p.manifest.obj.namespace, p.manifest.obj.name,
                       decide_apply_action(p.live, self._apply_one(p, dry_run=False))) for p in plans]

    def _get_or_none(self, path: str) -> Body | None:
        try:
            return self.client.get(path)
        except ApiError as exc:
            if exc.status == 404 and not detect_missing_type(exc):
                return None
            raise

    def _apply_one(self, p: _Planned, dry_run: bool) -> Body:
        m = p.manifest
        doing = f'error when {"creating" if p.live is None else "applying patch"} "{m.source}"'
        query = {"fieldManager": FIELD_MANAGER, "force": "true", "dryRun": "All" if dry_run else None}
        return self._call(lambda: self.client.request("PATCH", p.path, query, json.dumps(p.body), APPLY_PATCH),
                          m.info, m.obj.name, doing)

    def delete(self, targets: list[tuple[KindInfo, str, str]], ignore_not_found: bool = False) -> list[Result]:
        """Delete each (kind, namespace, name) and wait until it is gone; a missing one fails the whole
        command before anything is deleted, unless ignored."""
        found = []
        for info, ns, name in targets:
            path = resource_path(info, ns, name)
            live = self._read(info, path, name)
            if live is None and not ignore_not_found:
                raise not_found(info, name)
            if live is not None:
                found.append((info, ns, name, path, live["metadata"].get("uid")))
        results = []
        for info, ns, name, path, uid in found:
            try:
                self._call(lambda: self.client.delete(path, uid=uid, propagation="Background"), info, name)
            except NotFound:  # gone meanwhile
                if not ignore_not_found:
                    raise
                continue
            results.append(Result(info, ns, name, "deleted"))
        for info, ns, name, path, uid in found:
            self._wait_gone(info, name, path, uid)
        return results

    def _wait_gone(self, info: KindInfo, name: str, path: str, uid: str | None) -> None:
        deadline = self.clock() + self.delete_timeout
        while True:
            live = self._read(info, path, name)
            if live is None or live["metadata"].get("uid") != uid:
                return
            if self.clock() >= deadline:
                raise TimeoutError(f'timed out after {self.delete_timeout:g}s waiting for {info.qualified} "{name}" '
                                   "to be deleted (finalizers still running?)")
            self.sleep(0.2)

    def scale(self, info: KindInfo, namespace: str, name: str, replicas: int) -> Result:
        """kubectl scale on the API: a merge patch of the Deployment's `scale` subresource."""
        if info.kind != "Deployment":
            raise Invalid(f'cannot scale {info.plural} "{name}": only deployments can be scaled here')
        body = self.get(info, namespace, name)
        path = resource_path(info, namespace, name) + "/scale"
        self._call(lambda: self.client.request("PATCH", path, {"fieldManager": FIELD_MANAGER},
                                               {"spec": {"replicas": replicas}}, MERGE_PATCH), info, name)
        changed = body["spec"].get("replicas") != replicas
        return Result(info, namespace, name, "scaled" if changed else "not scaled")

    def label(self, info: KindInfo, namespace: str | None, names: list[str], selector: LabelSelector | None,
              set_labels: dict[str, str], remove: list[str], overwrite: bool = False) -> list[Result]:
        """kubectl label on the API: the same checks and results as `Store.label`."""
        from ..model.meta import check_label_key, check_label_value

        for key, value in set_labels.items():
            try:
                check_label_key(key)
                check_label_value(value)
            except ValueError as exc:
                raise Invalid(f"{info.plural} is invalid: metadata.labels: {exc}") from None
        ns = namespace if info.namespaced else None
        if selector is not None:
            targets = self.list(info, ns, selector)
        else:
            targets = [self.get(info, ns or "", name) for name in names]
        patches = [plan_labels(b["metadata"].get("labels") or {}, set_labels, remove, overwrite) for b in targets]
        results = []
        for body, patch in zip(targets, patches):
            meta = body["metadata"]
            if patch is not None:
                path = resource_path(info, meta.get("namespace"), meta["name"])
                doc = {"metadata": {"labels": patch, "resourceVersion": meta["resourceVersion"]}}
                self._call(lambda: self.client.request("PATCH", path, {"fieldManager": FIELD_MANAGER}, doc,
                                                       MERGE_PATCH), info, meta["name"])
            results.append(Result(info, meta.get("namespace", ""), meta["name"],
                                  "labeled" if patch is not None else "not labeled"))
        return results

