"""Contract ABIs and bytecode from ape's compiled build: the one source of bindings.

ape 0.8 writes the whole project's compiled output into `.build/__local__.json`, an EthPM
manifest whose `contractTypes` hold each contract's ABI and deployment bytecode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_MANIFEST = Path(".build") / "__local__.json"
# What a compile reads: a change to any of these makes the build stale.
_SOURCE_GLOBS = ("contracts/**/*.vy", "contracts/**/*.vyi", "ape-config.yaml")


def contract_type(name: str, project_root: Path | str = REPO) -> dict:
    """{"abi": [...], "bytecode": "0x..."} of a compiled contract, e.g. "Ledger"."""
    path = Path(project_root) / BUILD_MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no compiled build at {path}: run `ape compile` (or ensure_compiled)")
    types = _load(path, path.stat().st_mtime_ns)
    if name not in types:
        raise KeyError(f"contract {name!r} not in {path}; compiled: {sorted(types)}")
    return types[name]


def is_stale(project_root: Path | str = REPO) -> bool:
    """True when the build is missing or older than a contract source or the ape config."""
    root = Path(project_root)
    build = root / BUILD_MANIFEST
    if not build.exists():
        return True
    built = build.stat().st_mtime_ns
    return any(p.stat().st_mtime_ns > built for g in _SOURCE_GLOBS for p in root.glob(g))


def ensure_compiled(project_root: Path | str = REPO) -> Path:
    """Run `ape compile` when the build is stale; returns the manifest's path."""
    root = Path(project_root)
    if is_stale(root):
        # ape-vyper finds the vyper compiler on PATH; without the venv's bin it tries to download one.
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(
            [str(bin_dir / "ape"), "compile", "--force"],
            cwd=root, env=env, capture_output=True, text=True,
        )
        if done.returncode != 0 or is_stale(root):
            raise RuntimeError(f"ape compile failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return root / BUILD_MANIFEST


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int) -> dict[str, dict]:
    # Keyed by mtime so that a recompile in the same process is picked up.
    manifest = json.loads(path.read_text())
    return {
        name: {"abi": ct["abi"], "bytecode": ct["deploymentBytecode"]["bytecode"]}
        for name, ct in manifest["contractTypes"].items()
    }
