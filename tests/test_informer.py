"""The control plane's object cache equals a fresh read of the store after any sequence of creates,
updates, label changes and deletes (including ones the controllers make in the same transaction)."""
from __future__ import annotations

import random

import yaml

from conftest import apply, set_labels
from meshway.model import find_kind
from meshway.store.informer import ObjectCache

KINDS = ("Namespace", "Service", "Pod", "Deployment", "VirtualService", "Gateway")


def test_cache_follows_the_change_feed(store):
    rv, snapshot = store.snapshot(KINDS)
    cache = ObjectCache(snapshot)
    rng = random.Random(3)
    for step in range(60):
        ns, name = rng.choice(["a", "b"]), f"x{rng.randrange(4)}"
        action = rng.randrange(4)
        if action == 0:
            apply(store, yaml.safe_dump_all([
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
                 "spec": {"replicas": rng.randint(0, 2), "selector": {"matchLabels": {"app": name}},
                          "template": {"metadata": {"labels": {"app": name}},
                                       "spec": {"containers": [{"name": "c", "image": "x"}]}}}}]))
        elif action == 1:
            apply(store, yaml.safe_dump_all([
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                 "metadata": {"name": name, "namespace": ns},
                 "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}],
                                                     "timeout": f"{rng.randint(1, 9)}s"}]}}]))
        elif action == 2 and store.list(find_kind("deploy"), ns):
            dep = rng.choice(store.list(find_kind("deploy"), ns))
            set_labels(store, "deploy", ns, dep["metadata"]["name"], {"step": str(step)}, overwrite=True)
        else:
            kind = rng.choice(["deploy", "vs"])
            store.delete([(find_kind(kind), ns, name)], ignore_not_found=True)
        changes = store.db.changes_since(rv)
        if changes:
            rv = changes[-1].rv
        cache.apply(changes)
        assert cache.lists(KINDS) == store.snapshot(KINDS)[1], f"step {step}"
