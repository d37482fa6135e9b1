"""A pyarrow filesystem for a local path or ``s3://`` / ``s3a://`` URI, for the code that
touches files without Spark: the event generator writing the raw history, the demo's checks,
the tests' and benchmarks' clean-up. Spark reaches the same URIs through S3A
(``plumbing.spark.s3a_conf``); Delta tables go through ``plumbing.lake``.
"""
from __future__ import annotations

from urllib.parse import urlparse

import pyarrow.fs as pafs


def filesystem_and_root(uri: str, storage_options: dict[str, str]) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path of ``uri`` in it (``storage_options``: ``cfg.storage_options(uri)``)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), parsed.path if parsed.scheme else uri
    if parsed.scheme not in ("s3", "s3a"):
        raise ValueError(f"unsupported URI {uri!r}: use a local path, s3://bucket/prefix or s3a://bucket/prefix")
    options = {key.upper(): value for key, value in storage_options.items()}
    endpoint = options.get("AWS_ENDPOINT_URL")
    endpoint_url = urlparse(endpoint) if endpoint else None
    filesystem = pafs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"),
        region=options.get("AWS_REGION"),
        endpoint_override=endpoint_url.netloc if endpoint_url else None,
        scheme=endpoint_url.scheme if endpoint_url else "https")
    return filesystem, f"{parsed.netloc}{parsed.path}".rstrip("/")


def delete_tree(uri: str, storage_options: dict[str, str]) -> None:
    """Delete everything under ``uri`` (nothing when it does not exist)."""
    filesystem, root = filesystem_and_root(uri, storage_options)
    if filesystem.get_file_info(root).type != pafs.FileType.NotFound:
        filesystem.delete_dir(root)
