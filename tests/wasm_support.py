"""proxy-wasm test modules, assembled at test time from the WebAssembly text under tests/data/wasm
(wat2wasm from the `wasmtime` test dependency): no binary is kept in the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

WAT = Path(__file__).resolve().parent / "data" / "wasm"


def assemble(name: str, folder: Path) -> Path:
    """tests/data/wasm/<name>.wat as <folder>/<name>.wasm."""
    try:
        from wasmtime import wat2wasm
    except ImportError:
        message = "the `wasmtime` package (wat2wasm) is missing: pip install -e '.[test]'"
        if os.environ.get("MESHWAY_REQUIRE_E2E") == "1":
            pytest.fail(message)
        pytest.skip(message)
    path = folder / f"{name}.wasm"
    path.write_bytes(bytes(wat2wasm((WAT / f"{name}.wat").read_text())))
    return path
