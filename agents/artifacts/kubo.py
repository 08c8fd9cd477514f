"""An artifact store backed by a kubo (go-ipfs) node, through its HTTP RPC API.

Blocks go in with `block/put` as raw sha2-256 blocks, so kubo names them with the same CID as the
embedded store, and they are pinned so kubo's garbage collector keeps them. Reads run with
`offline=true`: this store answers for what the node holds, and fetching from elsewhere is the job
of agents.artifacts.fetch, which trusts no source. Kubo is a source too: every answer is hashed.
"""

from __future__ import annotations

import httpx

from agents.artifacts.cid import canonical_cid, cid_of, digest_from_cid, matches
from agents.artifacts.store import (
    MAX_BLOCK_BYTES,
    ArtifactCorrupt,
    ArtifactError,
    ArtifactNotFound,
    check_size,
)


class KuboStore:
    def __init__(
        self,
        api_url: str,
        *,
        timeout: float = 10.0,
        max_bytes: int = MAX_BLOCK_BYTES,
    ):
        self.api_url = api_url.rstrip("/")
        self.max_bytes = max_bytes
        self._http = httpx.Client(base_url=f"{self.api_url}/api/v0", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _post(self, command: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.post(command, **kwargs)
        except httpx.HTTPError as exc:
            raise ArtifactError(f"kubo at {self.api_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            # kubo reports failures as HTTP 500 with {"Message": ..., "Type": "error"}
            try:
                message = response.json()["Message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            if "not found" in message or "could not find" in message:
                raise ArtifactNotFound(f"artifact {kwargs['params']['arg']} not found in kubo: {message}")
            raise ArtifactError(f"kubo {command} failed ({response.status_code}): {message}")
        return response

    def put(self, data: bytes) -> str:
        check_size(data, self.max_bytes)
        data = bytes(data)
        expected = cid_of(data)
        response = self._post(
            "block/put",
            params={"cid-codec": "raw", "mhtype": "sha2-256", "pin": "true"},
            files={"file": ("artifact", data, "application/octet-stream")},
        )
        try:
            returned = canonical_cid(response.json()["Key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"kubo block/put gave an unreadable answer: {response.text[:200]!r}") from exc
        if returned != expected:
            raise ArtifactCorrupt(f"kubo named the block {returned}, its content hashes to {expected}")
        return expected

    def get(self, cid: str) -> bytes:
        digest = digest_from_cid(cid)
        response = self._post("block/get", params={"arg": canonical_cid(cid), "offline": "true"})
        data = response.content
        if len(data) > self.max_bytes or not matches(data, digest):
            raise ArtifactCorrupt(f"kubo returned bytes that do not match {cid}")
        return data

    def has(self, cid: str) -> bool:
        digest_from_cid(cid)
        try:
            self._post("block/stat", params={"arg": canonical_cid(cid), "offline": "true"})
        except ArtifactNotFound:
            return False
        return True
