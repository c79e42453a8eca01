"""The embedded store's API: apply, label, delete, get, list and watch, each write one transaction
that also runs the controllers (`reconcile`), so status is correct when the call returns."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import labels as L
from ..model import limits
from ..model.errors import InputError
from ..model.registry import BY_KIND, KindInfo
from .db import Change, Database
from .errors import Invalid, LabelConflict, NotFound
from .objects import last_applied, record_last_applied, set_defaults, three_way_merge, user_view
from .writer import Writer, default_suffix

if TYPE_CHECKING:
    from ..model.meta import LabelSelector
    from ..model.parse import Manifest

Body = dict[str, Any]
BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", L.ROOT_NAMESPACE)


def default_state_dir() -> Path:
    if os.environ.get("MESHWAY_STATE_DIR"):
        return Path(os.environ["MESHWAY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "meshway"


@dataclass(frozen=True)
class Result:
    """One object's outcome, printed as kubectl prints it: `service/reviews configured`."""

    info: KindInfo
    namespace: str
    name: str
    action: str

    def __str__(self) -> str:
        return f"{self.info.qualified}/{self.name} {self.action}"


def reconcile(w: Writer) -> None:
    """The controllers (`store/reconcile.py`), imported when a write first runs them: writes need the
    models and the mesh view, a read (`meshway get`) starts without them."""
    from .reconcile import reconcile as run_controllers

    run_controllers(w)


def selector_matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    from ..model.selectors import selector_matches as matches

    return matches(selector, labels)


def _not_found(info: KindInfo, name: str) -> NotFound:
    return NotFound(f'{info.plural}{"." + info.group if info.group else ""} "{name}" not found')


class Store:
    def __init__(self, state_dir: Path | str | None = None, random_suffix: Callable[[], str] = default_suffix):
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.db = Database(self.state_dir / "store.db")
        self.random_suffix = random_suffix
        self._bootstrap()

    def close(self) -> None:
        self.db.close()

    def _writer(self, txn) -> Writer:
        return Writer(txn, random_suffix=self.random_suffix)

    def _bootstrap(self) -> None:
        with self.db.read() as txn:
            if txn.get_meta("bootstrapped"):
                return
        with self.db.write() as txn:
            if txn.get_meta("bootstrapped"):
                return
            w = Writer(txn, random_suffix=self.random_suffix, full=True)
            for ns in BOOTSTRAP_NAMESPACES:
                w.create("Namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            w.create("GatewayClass", {
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": L.WAYPOINT_CLASS},
                "spec": {"controllerName": L.MESH_CONTROLLER, "description": "The default Istio waypoint GatewayClass"}})
            txn.set_meta("bootstrapped", "1")
            reconcile(w)

    # -- writes -----------------------------------------------------------------------------------
    def apply(self, manifests: list[Manifest]) -> list[Result]:
        """Create or update every manifest, all or nothing."""
        results = []
        with self.db.write() as txn:
            w = self._writer(txn)
            for m in manifests:
                results.append(self._apply_one(w, m))
            reconcile(w)
        return results

    def _apply_one(self, w: Writer, m: Manifest) -> Result:
        info, ns, name = m.info, m.obj.namespace, m.obj.name
        if info.namespaced and w.txn.get("Namespace", "", ns) is None:
            raise NotFound(f'error when creating "{m.source}": namespaces "{ns}" not found')
        desired = user_view(m.body)
        live = w.txn.get(info.kind, ns, name)
        if live is None:
            body = copy.deepcopy(desired)
            record_last_applied(body, desired)
            self._check_annotations(body, m, "creating")
            w.create(info.kind, body)
            return Result(info, ns, name, "created")
        base = {k: v for k, v in live.items() if k != "status"}
        merged = three_way_merge(base, last_applied(live), desired)
        if info.kind == "Service":
            self._keep_cluster_ip(live, merged, m)
        record_last_applied(merged, desired)
        self._check_annotations(merged, m, "applying patch")
        set_defaults(info.kind, merged)
        if info.kind == "Service":
            w.retype_service(merged)
        if "status" in live:  # status belongs to the controllers, never to apply
            merged["status"] = live["status"]
        from ..model.parse import parse_object

        try:
            parse_object(merged, m.source, m.document)
        except InputError as exc:
            raise Invalid(f'{info.kind} "{name}" is invalid after merging with the live object: {exc.path}: '
                          f"{exc.message}") from None
        changed = w.update(info.kind, live, merged)
        return Result(info, ns, name, "configured" if changed else "unchanged")

    @staticmethod
    def _check_annotations(body: Body, m: Manifest, doing: str) -> None:
        """kubectl apply records the object in an annotation, so the total counts it too (as in Kubernetes)."""
        if limits.annotations_size(body["metadata"].get("annotations") or {}) > limits.MAX_ANNOTATIONS_BYTES:
            raise Invalid(f'error when {doing} "{m.source}": {m.info.kind} "{m.obj.name}" is invalid: '
                          f"metadata.annotations: {limits.ANNOTATIONS_TOO_LONG}")

    @staticmethod
    def _keep_cluster_ip(live: Body, merged: Body, m: Manifest) -> None:
        old = live.get("spec", {}).get("clusterIP")
        new = m.body.get("spec", {}).get("clusterIP")
        if new and old and new != old:
            raise Invalid(f'Service "{m.obj.name}" is invalid: spec.clusterIP: Invalid value: "{new}": '
                          "field is immutable")
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if key in live.get("spec", {}):
                merged["spec"].setdefault(key, live["spec"][key])

    def delete(self, targets: list[tuple[KindInfo, str, str]], ignore_not_found: bool = False) -> list[Result]:
        """Delete each (kind, namespace, name); a missing one is an error unless ignored."""
        results = []
        with self.db.write() as txn:
            w = self._writer(txn)
            for info, ns, name in targets:
                live = txn.get(info.kind, ns if info.namespaced else "", name)
                if live is None:
                    if ignore_not_found:
                        continue
                    raise _not_found(info, name)
                w.remove(info.kind, live)
                results.append(Result(info, ns, name, "deleted"))
            reconcile(w)
        return results

    def label(self, info: KindInfo, namespace: str | None, names: list[str], selector: LabelSelector | None,
              set_labels: dict[str, str], remove: list[str], overwrite: bool = False) -> list[Result]:
        """kubectl label: set `k=v`, remove `k-`, on named objects or those matching a selector."""
        from ..model.meta import check_label_key, check_label_value

        for key, value in set_labels.items():
            try:
                check_label_key(key)
                check_label_value(value)
            except ValueError as exc:
                raise Invalid(f"{info.plural} is invalid: metadata.labels: {exc}") from None
        results = []
        with self.db.write() as txn:
            w = self._writer(txn)
            ns = namespace if info.namespaced else ""
            if selector is not None:
                targets = [b for b in txn.list(info.kind, ns if info.namespaced else None)
                           if selector_matches(selector, b["metadata"].get("labels") or {})]
            else:
                targets = []
                for name in names:
                    body = txn.get(info.kind, ns, name)
                    if body is None:
                        raise _not_found(info, name)
                    targets.append(body)
            for body in targets:
                results.append(self._label_one(w, info, body, set_labels, remove, overwrite))
            reconcile(w)
        return results

    @staticmethod
    def _label_one(w: Writer, info: KindInfo, body: Body, set_labels: dict[str, str], remove: list[str],
                   overwrite: bool) -> Result:
        meta = body["metadata"]
        labels = dict(meta.get("labels") or {})
        for key, value in set_labels.items():
            if key in labels and labels[key] != value and not overwrite:
                raise LabelConflict(f"'{key}' already has a value ({labels[key]}), and --overwrite is false")
            labels[key] = value
        for key in remove:
            labels.pop(key, None)
        new = copy.deepcopy(body)
        new["metadata"]["labels"] = labels
        if not labels:
            new["metadata"].pop("labels", None)
        changed = w.update(info.kind, body, new)
        return Result(info, meta.get("namespace", ""), meta["name"], "labeled" if changed else "not labeled")

    def scale(self, info: KindInfo, namespace: str, name: str, replicas: int) -> Result:
        """kubectl scale: set a Deployment's `spec.replicas` (its controller then adds or removes pods)."""
        if info.kind != "Deployment":
            raise Invalid(f'cannot scale {info.plural} "{name}": only deployments can be scaled here')
        if not 0 <= replicas <= 1000:
            raise Invalid(f'deployments.apps "{name}" is invalid: spec.replicas: must be from 0 to 1000, not {replicas}')
        with self.db.write() as txn:
            w = self._writer(txn)
            body = txn.get(info.kind, namespace, name)
            if body is None:
                raise _not_found(info, name)
            new = copy.deepcopy(body)
            new["spec"]["replicas"] = replicas
            changed = w.update(info.kind, body, new)
            reconcile(w)
        return Result(info, namespace, name, "scaled" if changed else "not scaled")

    def write_status(self, kind: str, namespace: str, name: str, status: Body) -> None:
        """For the runtime (kubelet's role): merge into an object's status, then reconcile."""
        with self.db.write() as txn:
            w = self._writer(txn)
            body = txn.get(kind, namespace, name)
            if body is None:
                raise _not_found(BY_KIND[kind], name)
            w.set_status(kind, body, status)
            reconcile(w)

    def write_statuses(self, updates: list[tuple[str, str, str, Body]]) -> list[tuple[str, str, str]]:
        """Many `write_status` calls in one transaction (one commit, one reconcile), for the
        runtime's batches: (kind, namespace, name, status) each. Objects that are gone are skipped
        and returned; an unchanged status writes nothing."""
        if not updates:
            return []
        missing = []
        with self.db.write() as txn:
            w = self._writer(txn)
            for kind, namespace, name, status in updates:
                body = txn.get(kind, namespace, name)
                if body is None:
                    missing.append((kind, namespace, name))
                    continue
                w.set_status(kind, body, status)
            if len(missing) < len(updates):
                reconcile(w)
        return missing

    def set_nodes(self, count: int) -> None:
        with self.db.write() as txn:
            txn.set_meta("nodes", str(count))

    def node_count(self) -> int:
        with self.db.read() as txn:
            return int(txn.get_meta("nodes", "1"))

    # -- reads ------------------------------------------------------------------------------------
    def get(self, info: KindInfo, namespace: str, name: str) -> Body:
        with self.db.read() as txn:
            body = txn.get(info.kind, namespace if info.namespaced else "", name)
        if body is None:
            raise _not_found(info, name)
        return body

    def list(self, info: KindInfo, namespace: str | None = None, selector: LabelSelector | None = None) -> list[Body]:
        with self.db.read() as txn:
            items = txn.list(info.kind, namespace if info.namespaced else None)
        if selector is not None:
            items = [b for b in items if selector_matches(selector, b["metadata"].get("labels") or {})]
        return items

    def snapshot(self, kinds: tuple[str, ...]) -> tuple[int, dict[str, list[Body]]]:
        """(resourceVersion, {kind: every object}) read in one consistent transaction."""
        with self.db.read() as txn:
            rv = self.db.current_rv()
            return rv, {kind: txn.list(kind) for kind in kinds}

    def dump(self) -> list[tuple[str, str, str, str]]:
        """Every stored row, for byte-for-byte comparisons in tests and `debug`."""
        with self.db.read() as txn:
            return txn.conn.execute("SELECT kind, namespace, name, body FROM objects ORDER BY 1,2,3").fetchall()

    def watch(self, since: int, poll: float = 0.05, stop: Callable[[], bool] = lambda: False) -> Iterator[list[Change]]:
        """Batches of changes after `since`, as other processes commit them; raises db.Expired if `since`
        was compacted away (re-list with `snapshot`, then watch from its version)."""
        rv = since
        while not stop():
            batch = self.db.changes_since(rv)
            if batch:
                rv = batch[-1].rv
                yield batch
            else:
                time.sleep(poll)
