"""HTTP downloads: streamed with a progress bar to a temporary name, renamed when whole."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import requests

from .errors import TaskError
from .ui import download_progress

CHUNK = 1 << 20


class Unreachable(TaskError):
    """The server could not be reached at all (as opposed to answering with an error)."""


def fetch_text(url: str, timeout: float = 30) -> str:
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.ConnectionError as e:
        raise Unreachable(f"cannot reach {url}: {e}") from None
    except requests.RequestException as e:
        raise TaskError(f"download of {url} failed: {e}") from None
    if resp.status_code != 200:
        raise TaskError(f"download of {url} failed: HTTP {resp.status_code}")
    return resp.text


def download(url: str, dest: Path, expect_sha512: str | None = None, timeout: float = 30) -> str:
    """Download `url` to `dest`; return its sha512 hex digest.

    The data goes to a temporary file next to `dest` and is renamed only when it
    is complete and, if `expect_sha512` is given, matches it. On any failure no
    file is left behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    digest = hashlib.sha512()
    try:
        try:
            resp = requests.get(url, stream=True, timeout=timeout)
        except requests.ConnectionError as e:
            raise Unreachable(f"cannot reach {url}: {e}") from None
        with resp:
            if resp.status_code != 200:
                raise TaskError(f"download of {url} failed: HTTP {resp.status_code}")
            total = int(resp.headers.get("content-length") or 0) or None
            with download_progress() as progress, open(tmp, "wb") as out:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
        got = digest.hexdigest()
        if expect_sha512 is not None and got != expect_sha512.lower():
            raise TaskError(
                f"checksum mismatch for {url}: expected sha512 {expect_sha512[:16]}..., "
                f"got {got[:16]}...; the file was discarded"
            )
        os.replace(tmp, dest)
        return got
    except requests.RequestException as e:
        raise TaskError(f"download of {url} failed: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
