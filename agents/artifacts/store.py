"""Content-addressed block stores: the embedded file store (default) and the choice between it and kubo.

A store is named by CIDs (agents.artifacts.cid) and verifies what it reads: a block whose bytes no
longer hash to its name is an error, never an answer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from agents.artifacts.cid import canonical_cid, cid_of, digest_from_cid, matches

# kubo refuses blocks over 1 MiB (`block put` without --allow-big-block) because bitswap cannot
# exchange them; an artifact bigger than this could not be served by IPFS as one raw block.
MAX_BLOCK_BYTES = 1 << 20


class ArtifactError(Exception):
    """Base of the store errors."""


class ArtifactNotFound(ArtifactError):
    pass


class ArtifactTooLarge(ArtifactError):
    pass


class ArtifactCorrupt(ArtifactError):
    """Bytes that do not hash to the CID they were stored or served under."""


@runtime_checkable
class ArtifactStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store `data`; returns its canonical CID. Idempotent."""
        ...

    def get(self, cid: str) -> bytes:
        """The block named `cid`, verified; raises CIDError, ArtifactNotFound or ArtifactCorrupt."""
        ...

    def has(self, cid: str) -> bool: ...


def check_size(data: bytes, max_bytes: int) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"an artifact is bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ArtifactTooLarge(f"artifact is {len(data)} bytes, the limit is {max_bytes}")


class FileStore:
    """One file per block, named by its canonical CID, written atomically (temp file + rename)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int = MAX_BLOCK_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, cid: str) -> Path:
        name = canonical_cid(cid)
        # Shard like kubo's flatfs (next-to-last/2) so no directory grows to millions of entries.
        return self.root / name[-3:-1] / name

    def put(self, data: bytes) -> str:
        check_size(data, self.max_bytes)
        data = bytes(data)
        cid = cid_of(data)
        path = self._path(cid)
        if path.exists():
            return cid
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return cid

    def get(self, cid: str) -> bytes:
        path = self._path(cid)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {cid} not found") from None
        if not matches(data, digest_from_cid(cid)):
            raise ArtifactCorrupt(f"stored artifact {cid} does not match its digest")
        return data

    def has(self, cid: str) -> bool:
        return self._path(cid).exists()


def open_store(url: str) -> ArtifactStore:
    """The store a setting names: a directory (or file:// URL) for the embedded store, or the
    http(s) URL of a kubo RPC API (e.g. http://127.0.0.1:5001)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        # Imported here because kubo.py builds on this module's errors and size check.
        from agents.artifacts.kubo import KuboStore

        return KuboStore(url)
    if parsed.scheme == "file":
        return FileStore(parsed.path)
    if parsed.scheme == "":
        return FileStore(url)
    raise ValueError(
        f"unsupported artifact store URL {url!r}: use a directory, a file:// URL "
        "or the http(s) URL of a kubo RPC API"
    )
