"""Downloading dataset archives: streamed, md5-verified, atomic.

The file appears at its final path only once it is complete and its checksum
matches; a failed, interrupted (Ctrl-C) or corrupt download leaves nothing
behind (:func:`pvt_np.io.atomic.atomic_write` writes to a temporary file and
renames it).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from pvt_np.data.errors import CorruptDatasetError, DataError
from pvt_np.io.atomic import atomic_write

__all__ = ["DownloadError", "download_url", "file_md5"]

_CHUNK = 1 << 20


class DownloadError(DataError, OSError):
    """The transfer itself failed (no network, HTTP error, connection cut)."""


def file_md5(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """Hex md5 of a file, read in chunks (md5 identifies the official archives; it is not a security check)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    *,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` with a tqdm progress bar; verify ``md5`` when given.

    Raises :class:`DownloadError` when the transfer fails or is cut short and
    :class:`~pvt_np.data.errors.CorruptDatasetError` on an md5 mismatch; in both
    cases ``dest`` is not created (nor replaced) and no temporary file remains.
    """
    dest = Path(dest)
    h = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
            total = int(length) if length and length.isdigit() else None
            with (
                atomic_write(dest, "wb") as f,
                tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=not progress
                ) as bar,
            ):
                while block := response.read(_CHUNK):
                    f.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
                if total is not None and received != total:
                    raise DownloadError(f"download of {url} was cut short: got {received} of {total} bytes")
                if md5 is not None and h.hexdigest() != md5:
                    raise CorruptDatasetError(
                        f"downloaded {url} but its md5 is {h.hexdigest()}, expected {md5} "
                        "(corrupt transfer or a changed file); nothing was saved"
                    )
    except DataError:
        raise
    except (OSError, http.client.HTTPException) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise DownloadError(f"could not download {url} ({type(err).__name__}: {reason})") from err
    return dest
