"""Fingerprint files in an object store, through fsspec.

A shared registry keeps its rows in PostgreSQL and its files where every
worker can read them: a network folder, or an object store named by an fsspec
URL (``s3://bucket/prefix`` with s3fs installed, ``gs://...`` with gcsfs,
``memory://prefix`` for tests). critprint never picks a store itself: the
user names it with ``files=`` or ``$CRITPRINT_FILES``.
"""

from __future__ import annotations

import logging

from critprint.errors import RegistryError

__all__ = ["FsspecFileStore"]

logger = logging.getLogger(__name__)


class FsspecFileStore:
    """Fingerprint files under an fsspec URL, one object per file.

    An object store replaces a whole object in one request, so a reader sees
    the old file, the new one or none, never a part.

    Args:
        url: ``PROTOCOL://PATH``, for example ``memory://fingerprints``.

    Raises:
        RegistryError: If fsspec or the package of the protocol is missing.
    """

    def __init__(self, url: str) -> None:
        try:
            import fsspec.core
        except ImportError:
            raise RegistryError(
                f"fingerprint files at {url} need fsspec; run `pip install 'critprint[postgres]'`"
            ) from None
        try:
            self._fs, self._root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            raise RegistryError(
                f"cannot use fingerprint location {url}: {error}; install the fsspec package of its protocol "
                "or pass a folder"
            ) from None
        self.location = url.rstrip("/")

    def _key(self, file_name: str) -> str:
        return f"{self._root.rstrip('/')}/{file_name}"

    def prepare_write(self) -> None:
        """Create the prefix where the store has folders; object stores need nothing."""
        try:
            self._fs.makedirs(self._root, exist_ok=True)
        except OSError as error:
            raise RegistryError(f"cannot create fingerprint location {self.location}: {error}") from None

    def write(self, file_name: str, data: bytes) -> None:
        """Write one object in one request."""
        try:
            self._fs.pipe_file(self._key(file_name), data)
        except OSError as error:
            raise RegistryError(
                f"cannot write fingerprint file {self.path(file_name)}: {error}; check the store's permissions"
            ) from None

    def read(self, file_name: str) -> bytes:
        """Return an object's bytes; raise FileNotFoundError if it does not exist."""
        data: bytes = self._fs.cat_file(self._key(file_name))
        return data

    def delete(self, file_name: str) -> None:
        """Delete an object; nothing happens if it does not exist."""
        try:
            self._fs.rm_file(self._key(file_name))
        except FileNotFoundError:
            logger.debug("%s was already gone", self.path(file_name))

    def path(self, file_name: str) -> str:
        """Return an object's URL."""
        return f"{self.location}/{file_name}"
