"""Which store a command works on: the embedded store (the default) or a Kubernetes API server.
Pure but for one look at the files `$KUBECONFIG` names (the CLI passes in the flags and the
environment); nothing here imports the `kubernetes`
library, so `meshway --help` and `meshway get` on the embedded store stay fast.

The rule (README, "The CLI against a cluster"):
1. `--kubeconfig FILE` or `--context NAME` given: the Kubernetes API (with `--context` alone, the
   kubeconfig kubectl would use: the first file of `$KUBECONFIG`, else `~/.kube/config`). Given
   together with `--state-dir` it is an error (two stores named); `$MESHWAY_STATE_DIR` in the
   environment does not count against them (a flag beats an environment variable).
2. Else `$KUBECONFIG` set and neither `--state-dir` nor `$MESHWAY_STATE_DIR`: the Kubernetes API.
3. Else the embedded store. `~/.kube/config` alone never selects Kubernetes.

Commands of the local mesh (LOCAL_COMMANDS) always use the embedded store: with `--kubeconfig` or
`--context` they refuse, and `$KUBECONFIG` does not move them. `install`, `uninstall` and
`controlplane` (and `node`) have their own `--kubeconfig`/`--context`; the global ones are passed to them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCAL_COMMANDS = frozenset({"up", "down", "status", "exec", "logs", "port-forward", "proxy-config", "pc"})
# Commands with their own Kubernetes options: (the --kubeconfig parameter, the --context parameter).
KUBE_OPTION_NAMES = {"install": ("kubeconfig", "context"), "uninstall": ("kubeconfig", "context"),
                     "controlplane": ("kubeconfig", "kube_context"), "node": ("kubeconfig", "kube_context")}


@dataclass(frozen=True)
class Backend:
    kubernetes: bool
    kubeconfig: str | None = None
    context: str | None = None
    why: str = ""  # what selected Kubernetes: "--kubeconfig", "--context" or "$KUBECONFIG"


EMBEDDED = Backend(False)


def choose_backend(kubeconfig: str | None, context: str | None, state_dir_flag: bool, state_dir_env: bool,
                   kubeconfig_env: str | None, command: str | None = None) -> Backend:
    """The store for `command` (ValueError: a contradiction the user must resolve)."""
    explicit = "--kubeconfig" if kubeconfig else "--context" if context else ""
    if explicit and state_dir_flag:
        raise ValueError(f"{explicit} and --state-dir name two stores (a Kubernetes API and the embedded store): "
                         "pass one of them")
    if explicit and command in LOCAL_COMMANDS:
        raise ValueError(f"`meshway {command}` works on the local mesh (the embedded store), not on a Kubernetes "
                         f"API: drop {explicit}")
    if explicit:
        return Backend(True, kubeconfig, context, explicit)
    if command in LOCAL_COMMANDS or command in KUBE_OPTION_NAMES:
        return EMBEDDED
    if kubeconfig_env and not state_dir_flag and not state_dir_env:
        files = [f for f in kubeconfig_env.split(os.pathsep) if f]
        if not any(Path(f).is_file() for f in files):
            raise ValueError(f"$KUBECONFIG names no file that exists ({kubeconfig_env}): unset it to use the "
                             "embedded store, or point it at a kubeconfig")
        return Backend(True, None, None, "$KUBECONFIG")
    return EMBEDDED
