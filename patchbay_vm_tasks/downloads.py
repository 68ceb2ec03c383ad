"""HTTP downloads: streamed with a progress bar to a temporary name, renamed when whole.

Requests reads the usual proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, and
their lower-case forms) from the environment by itself; nothing here turns that off.
Also the "at most once a day" rule for checking whether something cached is still the
newest: `check_due` / `mark_checked` on a stamp file from `stamp_for`.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TaskError
from .files import temp_beside
from .ui import download_progress

if TYPE_CHECKING:
    import requests

CHUNK = 1 << 20

# Seconds, or (connect, read) seconds as requests takes them.
TimeoutSpec = float | tuple[float, float]
# A server that does not accept the connection within a few seconds is taken as
# unreachable; one that accepted may be slow to send.
DEFAULT_TIMEOUT: TimeoutSpec = (5.0, 30.0)
ONE_DAY = 24 * 3600.0


class Unreachable(TaskError):
    """The server could not be reached at all (DNS, refused, timeout, connection lost),
    as opposed to answering with an error."""


class HttpError(TaskError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def get(
    url: str,
    timeout: TimeoutSpec = DEFAULT_TIMEOUT,
    *,
    stream: bool = False,
    failed: str | None = None,
) -> requests.Response:
    """GET url, following redirects. No answer at all raises Unreachable; any other
    request error raises TaskError starting with `failed` (default "download of URL failed")."""
    import requests  # here: 0.1 s of every task's start-up, needed by few of them

    try:
        return requests.get(url, stream=stream, timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise Unreachable(f"cannot reach {url}: {_reason(e)}") from None
    except requests.RequestException as e:
        raise TaskError(f"{failed or f'download of {url} failed'}: {e}") from None


def _reason(error: Exception) -> str:
    """The innermost cause of a requests error, which is the part a user can act on
    ("Name or service not known"), without urllib3's pool and retry wrapping."""
    cause: BaseException = error
    while cause.__context__ is not None or cause.__cause__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause)
    for arg in getattr(cause, "args", ()):
        if isinstance(arg, str) and len(arg) < len(text):
            text = arg
    return text.split("): ", 1)[-1] if "): " in text else text


def _check_status(url: str, resp: requests.Response) -> None:
    if resp.status_code != 200:
        raise HttpError(
            f"download of {url} failed: HTTP {resp.status_code} {resp.reason or ''}".rstrip(),
            resp.status_code,
        )


def fetch_text(url: str, timeout: TimeoutSpec = DEFAULT_TIMEOUT) -> str:
    resp = get(url, timeout)
    _check_status(url, resp)
    return resp.text


def download(
    url: str, dest: Path, expect_sha512: str | None = None, timeout: TimeoutSpec = DEFAULT_TIMEOUT
) -> str:
    """Download `url` to `dest` with a progress bar on stderr; return its sha512 hex digest.

    The data goes to a temporary file next to `dest` and is renamed only when it is
    complete (as long as the server said it would be) and, if `expect_sha512` is given,
    matches it. On any failure no file is left behind. Connection problems raise
    Unreachable, HTTP error statuses HttpError (with .status), anything else TaskError.
    """
    import requests

    digest = hashlib.sha512()
    written = 0
    with get(url, timeout, stream=True) as resp:
        _check_status(url, resp)
        total = int(resp.headers.get("content-length") or 0) or None
        with temp_beside(dest) as tmp:
            try:
                with download_progress() as progress, open(tmp, "wb") as out:
                    task = progress.add_task(f"downloading {dest.name}", total=total)
                    for chunk in resp.iter_content(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        progress.advance(task, len(chunk))
            except (requests.ConnectionError, requests.Timeout) as e:
                raise Unreachable(f"download of {url} broke off: {e}") from None
            except requests.RequestException as e:
                raise TaskError(f"download of {url} failed: {e}; try again") from None
            # Content-Length is of the encoded body; only compare when not compressed.
            if total is not None and not resp.headers.get("content-encoding") and written != total:
                raise TaskError(
                    f"download of {url} was cut short ({written} of {total} bytes); try again"
                )
            got = digest.hexdigest()
            if expect_sha512 is not None and got != expect_sha512.lower():
                raise TaskError(
                    f"checksum mismatch for {url}: expected sha512 {expect_sha512[:16]}..., "
                    f"got {got[:16]}...; the file was discarded"
                )
            os.replace(tmp, dest)
    return got


def sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stamp_for(cache_dir: Path, key: str) -> Path:
    """The stamp file recording when `key` (e.g. a URL) was last checked online."""
    return cache_dir / f".checked-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def check_due(
    stamp: Path, *, refresh: bool = False, max_age: float = ONE_DAY, now: float | None = None
) -> bool:
    """True when the online check `stamp` records is due: asked for (`refresh`), never
    done, or older than `max_age` seconds. Lets cached things be used without touching
    the network on all but the first use of a day."""
    if refresh:
        return True
    try:
        age = (time.time() if now is None else now) - stamp.stat().st_mtime
    except OSError:
        return True
    return not 0 <= age < max_age


def mark_checked(stamp: Path) -> None:
    """Record that the online check was done now (whatever it found)."""
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    os.utime(stamp)
