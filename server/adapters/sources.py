"""Where an adapter id points: a folder under one of the `--adapter-dir` roots, or a Hugging Face repo.

Local ids are relative paths under a root (`acme/support-v2`), or absolute paths inside one. Nothing
outside the roots is ever read: `..`, absolute paths elsewhere and symlinks that lead out are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import AdapterIdError, AdapterNotFoundError

LOCAL, HUB = "local", "hub"
SOURCES = (LOCAL, HUB)
MAX_NAME_BYTES = 255  # a file name's limit on the usual file systems
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class AdapterLocation:
    """A resolved adapter: `path` for a local folder, or `repo_id` to fetch through huggingface_hub."""

    adapter_id: str
    source: str
    path: Path | None = None
    repo_id: str | None = None

    @property
    def key(self) -> str:
        """The identity the cache uses: a local adapter's folder (`upper`, `./upper` and its absolute
        path share one entry and one slot), a hub adapter's repo id."""
        return f"local:{self.path}" if self.source == LOCAL else f"hub:{self.adapter_id}"


class AdapterSources:
    def __init__(self, roots: tuple[str, ...] | list[str]):
        self.roots = [Path(root).expanduser().resolve() for root in roots]

    def _inside_roots(self, path: Path) -> Path | None:
        resolved = path.resolve()
        for root in self.roots:
            if resolved == root or root in resolved.parents:
                return resolved
        return None

    def _local(self, adapter_id: str) -> Path | None:
        if any(len(part.encode()) > MAX_NAME_BYTES for part in Path(adapter_id).parts):
            raise AdapterIdError(adapter_id, f"a path component is longer than {MAX_NAME_BYTES} bytes")
        try:
            path = self._local_path(adapter_id)
        except OSError as error:  # a name too long for the file system, and the like
            raise AdapterIdError(adapter_id, f"not a usable path ({error.strerror})") from None
        if path is not None and path in self.roots:
            raise AdapterIdError(adapter_id, "it names an --adapter-dir root, not an adapter in it")
        return path

    def _local_path(self, adapter_id: str) -> Path | None:
        candidate = Path(adapter_id)
        if ".." in candidate.parts:
            raise AdapterIdError(adapter_id, "`..` is not allowed in an adapter id")
        if candidate.is_absolute():
            inside = self._inside_roots(candidate)
            if inside is None:
                raise AdapterIdError(adapter_id, "absolute paths must lie inside an --adapter-dir root")
            return inside if inside.is_dir() else None
        for root in self.roots:
            path = root / candidate
            if path.exists() or path.is_symlink():
                inside = self._inside_roots(path)
                if inside is None:
                    raise AdapterIdError(adapter_id, "it leads outside the --adapter-dir roots (symlink)")
                if inside.is_dir():
                    return inside
        return None

    def locate(self, adapter_id: str, source: str | None) -> AdapterLocation:
        """Resolve without reading any adapter file; raises AdapterIdError (422) or AdapterNotFoundError."""
        if not adapter_id or adapter_id != adapter_id.strip() or "\x00" in adapter_id:
            raise AdapterIdError(adapter_id, "malformed adapter id")
        source = (source or "").lower() or None
        if source is not None and source not in SOURCES:
            raise AdapterIdError(
                adapter_id, f"adapter_source {source!r} is not supported ({', '.join(SOURCES)})"
            )
        if source in (None, LOCAL):
            path = self._local(adapter_id)
            if path is not None:
                return AdapterLocation(adapter_id, LOCAL, path=path)
            if source == LOCAL:
                roots = ", ".join(str(r) for r in self.roots) or "none configured"
                raise AdapterNotFoundError(adapter_id, f"not found under the adapter roots ({roots})")
        if ".." in Path(adapter_id).parts or not _HUB_ID.match(adapter_id):
            if source == HUB:
                raise AdapterIdError(adapter_id, "a hub adapter id looks like 'owner/name'")
            raise AdapterNotFoundError(adapter_id, "not found under the adapter roots and not a hub id")
        return AdapterLocation(adapter_id, HUB, repo_id=adapter_id)


def fetch_from_hub(location: AdapterLocation) -> Path:
    """Download (or find in the local cache) the adapter files of a hub repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(
            location.repo_id,
            allow_patterns=["adapter_config.json", "adapter_model.*", "*.json", "*.model", "*.txt"],
        )
    except (LocalEntryNotFoundError, RepositoryNotFoundError, OSError, ValueError) as error:
        raise AdapterNotFoundError(
            location.adapter_id, f"not found on the Hugging Face hub or in its cache: {error}"
        ) from error
    return Path(folder)
