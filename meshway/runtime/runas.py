"""Which user a container runs as, and how the runtime makes it so.

- `find_run_as(container, pod)` (pure): Kubernetes' `securityContext` rules: `runAsUser`,
  `runAsGroup` and `runAsNonRoot` of the container override the pod's; `supplementalGroups` and
  `fsGroup` (pod only) become supplementary groups; without `runAsUser` a container runs as 65532
  ("nonroot", as distroless images do), never as root; root only when the manifest says
  `runAsUser: 0`. `runAsNonRoot: true` with uid 0 is Kubernetes' CreateContainerConfigError.
- `build_setpriv_prefix(run_as)` (pure): `setpriv --reuid U --regid G --clear-groups
  --inh-caps=-all --bounding-set=-all --no-new-privs --` (util-linux), put after `ip netns exec NS`
  so that privileges are dropped once inside the pod's namespaces. No new privileges unless the
  container allows escalation: pods share the host's files here (no image), so a set-uid binary of
  the host must not give a pod root back.
- `find_interpreter(uid, gids)`: how a pod's user runs the built-in apps. This interpreter when
  that user can reach it, its standard library, meshway and our site-packages; else (a pyenv Python
  or a checkout under /root, which is 0700) the folders it cannot reach are bind-mounted read-only
  under /run/meshway/image, in a mount namespace of the container's own (`build_mount_prefix`:
  `unshare --mount` and `mount --bind` as root, before setpriv), the way an image's files appear
  in a container: the same interpreter and packages, nothing on the host opened up.
- `make_home(path, uid, gid)`: the user's HOME, a folder only it can use.
"""
from __future__ import annotations

import functools
import os
import stat
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import meshway

Body = dict[str, Any]
NONROOT = 65532  # the uid and gid of distroless' "nonroot" user: no passwd entry needed, owns nothing here
MAX_ID = 2**31 - 1
R, X = 4, 1  # permission bits as in the owner/group/other triplets


class RunAsError(ValueError):
    """The securityContext cannot be honoured (Kubernetes' CreateContainerConfigError)."""


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups
    no_new_privs: bool = True

    @property
    def root(self) -> bool:
        return self.uid == 0


IMAGE_ROOT = Path("/run/meshway/image")  # mount points: python (sys.base_prefix), src (meshway), site0...
MOUNT_SCRIPT = 'while [ "$1" != -- ]; do mount --bind -o ro "$1" "$2" || exit 126; shift 2; done; shift; exec "$@"'


@dataclass(frozen=True)
class Interpreter:
    python: str
    path: tuple[str, ...] = ()  # PYTHONPATH it needs (empty: its own site-packages have everything)
    mounts: tuple[tuple[str, str], ...] = ()  # (host folder, where the container sees it)
    library_path: str = ""  # LD_LIBRARY_PATH: a mounted interpreter's libpython (its RUNPATH is the host path)


def _id(value: Any, field: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise RunAsError(f"{where}: securityContext.{field} must be an integer from 0 to {MAX_ID}, got {value!r}")
    return value


def find_run_as(container: Body, pod: Body, where: str = "container") -> RunAs:
    """The user, group and supplementary groups a container runs as (pure)."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    c_sc = container.get("securityContext") or {}

    def pick(field: str) -> Any:
        return c_sc[field] if c_sc.get(field) is not None else pod_sc.get(field)

    uid = _id(pick("runAsUser"), "runAsUser", where)
    gid = _id(pick("runAsGroup"), "runAsGroup", where)
    uid = NONROOT if uid is None else uid
    if gid is None:  # no image to name the user's group: a group of its own number, root's only for root
        gid = uid
    if pick("runAsNonRoot") and uid == 0:
        raise RunAsError(f"{where}: runAsNonRoot is set and the container would run as root (runAsUser: 0)")
    extra = [_id(g, "supplementalGroups", where) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        extra.append(_id(pod_sc["fsGroup"], "fsGroup", where))
    groups = tuple(sorted({g for g in extra if g is not None and g != gid}))
    return RunAs(uid, gid, groups, no_new_privs=c_sc.get("allowPrivilegeEscalation") is not True)


def build_setpriv_prefix(run_as: RunAs) -> list[str]:
    """The command that drops to `run_as` and runs the rest of the argv; nothing for plain root."""
    if run_as == RunAs(0, 0, (), run_as.no_new_privs):
        return []
    groups = f"--groups={','.join(map(str, run_as.groups))}" if run_as.groups else "--clear-groups"
    prefix = ["setpriv", f"--reuid={run_as.uid}", f"--regid={run_as.gid}", groups]
    if not run_as.root:
        prefix += ["--inh-caps=-all", "--bounding-set=-all"]
    if run_as.no_new_privs:
        prefix.append("--no-new-privs")
    return [*prefix, "--"]


# -- who can reach a file (a mode check: ACLs are not read) ------------------------------------
def detect_allowed(info: os.stat_result, uid: int, gids: tuple[int, ...], want: int) -> bool:
    if uid == 0:
        return True
    mode = stat.S_IMODE(info.st_mode)
    shift = 6 if info.st_uid == uid else 3 if info.st_gid in gids else 0
    return (mode >> shift) & want == want


def build_mount_prefix(mounts: tuple[tuple[str, str], ...]) -> list[str]:
    """A private mount namespace with `mounts` bound read-only, then the rest of the argv."""
    if not mounts:
        return []
    return ["unshare", "--mount", "sh", "-c", MOUNT_SCRIPT, "meshway-image",
            *[part for mount in mounts for part in mount], "--"]


def find_denied(path: str, uid: int, gids: tuple[int, ...],
                stat_fn: Callable[[str], os.stat_result] = os.stat) -> str | None:
    """The first folder on the way to `path` (as written, then resolved) that the user cannot
    enter, or `path` itself when it cannot read it; None when it can."""
    for candidate in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
        parts = Path(candidate).parts
        for i in range(1, len(parts)):
            folder = str(Path(*parts[:i]))
            try:
                if not detect_allowed(stat_fn(folder), uid, gids, X):
                    return folder
            except OSError:
                return folder
        try:
            info = stat_fn(candidate)
        except OSError:
            return candidate
        if not detect_allowed(info, uid, gids, R | X if stat.S_ISDIR(info.st_mode) else R):
            return candidate
    return None


def _own_needs() -> tuple[str, list[str], list[str]]:
    """(this interpreter's stdlib, meshway's import root, site-packages folders on sys.path)."""
    root = str(Path(meshway.__file__).resolve().parent.parent)
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    return sysconfig.get_paths()["stdlib"], root, sites


@functools.lru_cache(maxsize=32)
def find_interpreter(uid: int, gids: tuple[int, ...], image_root: Path = IMAGE_ROOT) -> Interpreter:
    """How `uid` runs meshway's built-in apps (see the module's docstring)."""
    stdlib, root, sites = _own_needs()
    if uid == 0 or not any(find_denied(p, uid, gids) for p in (sys.executable, stdlib, root, *sites)):
        return Interpreter(sys.executable)
    mounts: list[tuple[str, str]] = []

    def reach(folder: str, name: str) -> str:
        if not find_denied(folder, uid, gids):
            return folder
        mounts.append((folder, str(image_root / name)))
        return mounts[-1][1]

    exe, base = os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)
    home = base
    if find_denied(exe, uid, gids) or find_denied(stdlib, uid, gids):
        if os.path.commonpath([exe, base]) != base:
            raise RunAsError(f"uid {uid} cannot run {exe} and meshway cannot mount it (it is outside {base}): install "
                             "Python where other users can run it, or give the pod securityContext.runAsUser: 0")
        home = reach(base, "python")
    python = os.path.join(home, os.path.relpath(exe, base))
    path = (reach(root, "src"), *[reach(site, f"site{i}") for i, site in enumerate(sites)])
    for _, point in mounts:
        make_open_dirs(Path(point))
    return Interpreter(python, path, tuple(mounts), os.path.join(home, "lib") if home != base else "")


def make_dirs(path: Path, mode: int) -> None:
    """`path` and its missing parents, each with exactly `mode` (a umask only narrows, so the mode is
    set again after creation)."""
    missing, probe = [], Path(path)
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            pass
        os.chmod(folder, mode)


def make_open_dirs(path: Path) -> None:
    """`path` and its missing parents as root's folders others may enter (0755, whatever the umask)."""
    make_dirs(path, 0o755)


def make_home(path: Path, uid: int, gid: int) -> Path:
    """`path` as the user's own folder (0700), under parents only root may write (0711): no other
    user can plant or swap it."""
    path = Path(path)
    make_dirs(path.parent, 0o711)  # others need to pass through, not to list
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise RunAsError(f"{path} must be a folder, not a link or a file")
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, 0o700)
    return path
