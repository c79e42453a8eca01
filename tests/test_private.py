"""Owner-only folders and files (meshway/private.py), whatever the umask, and planted folders refused."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshway.private import PrivatePathError, make_private_dir, open_private_log, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def test_folders_and_files_are_owner_only_under_umask_000(tmp_path, umask_000):
    leaf = make_private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", leaf)] == [0o700] * 3
    write_private(leaf / "key", "secret")
    with open_private_log(leaf / "log") as f:
        f.write(b"line\n")
    assert mode(leaf / "key") == mode(leaf / "log") == 0o600
    assert (leaf / "key").read_text() == "secret" and sorted(p.name for p in leaf.iterdir()) == ["key", "log"]


def test_existing_loose_ones_are_narrowed(tmp_path, umask_000):
    folder = tmp_path / "state"
    folder.mkdir()
    os.chmod(folder, 0o777)
    (folder / "log").write_text("old\n")
    os.chmod(folder / "log", 0o666)
    make_private_dir(folder)
    with open_private_log(folder / "log") as f:
        f.write(b"new\n")
    assert mode(folder) == 0o700 and mode(folder / "log") == 0o600
    assert (folder / "log").read_text() == "old\nnew\n"


def test_a_planted_link_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PrivatePathError):
        make_private_dir(tmp_path / "sock")
    with pytest.raises(OSError):  # nor is a file written through a link
        (tmp_path / "elsewhere" / "x").write_text("")
        (tmp_path / "log").symlink_to(tmp_path / "elsewhere" / "x")
        open_private_log(tmp_path / "log")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a folder owned by another user")
def test_a_folder_planted_by_another_user_is_refused(tmp_path):
    planted = tmp_path / "meshway-socks"
    planted.mkdir()
    os.chmod(planted, 0o777)
    os.chown(planted, 65534, 65534)
    with pytest.raises(PrivatePathError, match="belongs to uid 65534"):
        make_private_dir(planted)
    assert mode(planted) == 0o777  # left as it is: not ours to change
