"""Chroma clients: an embedded store in a directory, or a Chroma server reached over HTTP.

Why one helper: every caller gets the same settings (telemetry off) and the same rule for telling a
directory from a server address.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import chromadb
from chromadb.api import ClientAPI
from chromadb.config import Settings

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


class ClientError(ValueError):
    """A Chroma location is malformed or cannot be reached; the message names it."""


def chroma_settings() -> Settings:
    return Settings(anonymized_telemetry=False)


def is_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def open_client(path_or_url: str | os.PathLike[str], *, create: bool = True) -> ClientAPI:
    """A Chroma client for ``path_or_url``.

    ``http://host:port`` or ``https://host[:port]`` -> ``chromadb.HttpClient`` (the server must answer a
    heartbeat); anything else is a directory -> ``chromadb.PersistentClient`` (created when ``create``).
    """
    if is_url(path_or_url):
        url = urlparse(str(path_or_url))
        if not url.hostname:
            raise ClientError(f"Chroma server address {path_or_url!r} has no host")
        ssl = url.scheme == "https"
        try:
            port = url.port or (443 if ssl else 8000)
        except ValueError as err:
            raise ClientError(f"Chroma server address {path_or_url!r} has a bad port: {err}") from err
        try:
            client = chromadb.HttpClient(host=url.hostname, port=port, ssl=ssl, settings=chroma_settings())
            client.heartbeat()
        except Exception as err:  # the HTTP stack raises many types; all mean "not reachable"
            raise ClientError(f"cannot reach Chroma server at {path_or_url}: {err}") from err
        return client
    path = Path(path_or_url).expanduser()
    if path.exists() and not path.is_dir():
        raise ClientError(f"Chroma store path {str(path)!r} exists and is not a directory")
    if not path.exists():
        if not create:
            raise ClientError(f"Chroma store directory {str(path)!r} does not exist")
        path.mkdir(parents=True)
    return chromadb.PersistentClient(path=str(path), settings=chroma_settings())


def collection_names(client: ClientAPI) -> list[str]:
    return [c if isinstance(c, str) else c.name for c in client.list_collections()]
