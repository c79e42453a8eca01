"""The Kubernetes API behind the interface the translating control plane
(`meshway.runtime.controlplane.ControlPlane`) reads and writes the embedded store through: its
snapshot and change feed come from a `KubeSource` (the same watches the controller uses), its wake-up
is the source's pipe, and its status reports (a route's `Reconciled` condition, EnvoyFilter status)
are merge-patched on the objects' /status, by the leader only (`writes_allowed`). A WasmPlugin's
`imagePullSecret` is read when its image is pulled (`read_secret`), not watched: as istiod, which
reads the Secrets that plugins name."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..model.registry import BY_KIND, KindInfo
from .client import ApiError, KubeClient, kind_path
from .source import KubeSource

Body = dict[str, Any]


class KubeBackend:
    def __init__(self, client: KubeClient, source: KubeSource,
                 writes_allowed: Callable[[], bool] = lambda: True) -> None:
        self.client, self.source, self.writes_allowed = client, source, writes_allowed
        self.db = self  # the embedded store's change feed lives on `Store.db`
        self._wakeup = source.subscribe()

    # -- reads: the source's cache ------------------------------------------------------------------
    def snapshot(self, kinds: Iterable[str]) -> tuple[int, dict[str, list[Body]]]:
        return self.source.snapshot(kinds)

    def changes_since(self, rv: int, limit: int = 10_000):
        return self.source.changes_since(rv, limit)

    def list(self, info: KindInfo, namespace: str | None = None, selector=None) -> list[Body]:
        items = self.source.snapshot((info.kind,))[1][info.kind]
        return [b for b in items if namespace is None or b["metadata"].get("namespace") == namespace]

    def read_secret(self, namespace: str, name: str) -> Body | None:
        """The Secret (None when there is none); ValueError with the API server's reason otherwise."""
        try:
            return self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as exc:
            if exc.not_found:
                return None
            hint = (" (meshway's roles read no Secret but the CA's: grant `get` on this one to the control "
                    "plane's ServiceAccount, istio-system/meshway, with a Role in its namespace)"
                    if exc.status == 403 else "")
            raise ValueError(f"imagePullSecret {namespace}/{name}: {exc}{hint}") from None

    # -- wake-up ------------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._wakeup.fileno()

    def drain(self) -> int:
        return self._wakeup.drain()

    def close(self) -> None:  # the source belongs to whoever made it
        pass

    # -- writes ---------------------------------------------------------------------------------------
    def write_statuses(self, updates: list[tuple[str, str, str, Body]]) -> list[tuple[str, str, str]]:
        """Merge-patch each status (top-level keys replaced, as the embedded store merges them); the
        objects that are gone are returned. A follower writes nothing."""
        if not self.writes_allowed():
            return []
        gone = []
        for kind, ns, name, status in updates:
            if kind not in BY_KIND:
                continue
            try:
                self.client.merge_patch(kind_path(kind, ns or None, name, "status"), {"status": status})
            except ApiError as exc:
                if not exc.not_found:
                    raise
                gone.append((kind, ns, name))
        return gone
