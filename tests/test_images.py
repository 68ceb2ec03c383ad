"""Base images: checksum-verified downloads (a local HTTP server stands in for
cloud.debian.org, which this machine cannot reach), local paths, bad URLs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from patchbay_vm_tasks import images
from patchbay_vm_tasks.errors import UsageError, VmUnavailable

IMAGE = b"QFI\xfb pretend qcow2 image " * 1000
NAME = "debian-13-generic-amd64.qcow2"


def sums(data: bytes, name: str = NAME) -> bytes:
    return f"{hashlib.sha512(data).hexdigest()}  {name}\nabc  other.qcow2\n".encode()


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_parse_sha512sums() -> None:
    text = "aa  one.qcow2\nBB *two.raw\n"
    assert images.parse_sha512sums(text, "two.raw") == "bb"
    assert images.parse_sha512sums(text, "three") is None


def test_download_is_verified_and_cached_by_digest(http_server, tmp_path) -> None:
    base, routes = http_server
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(IMAGE)
    path = images.download_verified_image(f"{base}/img/{NAME}", tmp_path)
    digest = hashlib.sha512(IMAGE).hexdigest()
    assert path == tmp_path / digest[:16] / NAME
    assert path.read_bytes() == IMAGE
    # Second time: only the checksum list is fetched again (a refreshed `latest` is noticed).
    routes.requests.clear()
    assert images.download_verified_image(f"{base}/img/{NAME}", tmp_path) == path
    assert routes.requests == ["/img/SHA512SUMS"]


def test_wrong_checksum_is_refused_and_nothing_is_cached(http_server, tmp_path) -> None:
    base, routes = http_server
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(b"something else")
    with pytest.raises(VmUnavailable) as e:
        images.download_verified_image(f"{base}/img/{NAME}", tmp_path)
    assert "checksum mismatch" in str(e.value) and e.value.exit_code == 69
    assert [f for f in files_in(tmp_path) if not f.endswith(".lock")] == []


def test_corrupted_cache_entry_is_downloaded_again(http_server, tmp_path) -> None:
    base, routes = http_server
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(IMAGE)
    path = images.download_verified_image(f"{base}/img/{NAME}", tmp_path)
    path.write_bytes(IMAGE[:-10] + b"corrupted!")
    routes.requests.clear()
    assert images.download_verified_image(f"{base}/img/{NAME}", tmp_path) == path
    assert path.read_bytes() == IMAGE
    assert f"/img/{NAME}" in routes.requests


def test_image_missing_from_sha512sums_is_refused(http_server, tmp_path) -> None:
    base, routes = http_server
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(IMAGE, name="another.qcow2")
    with pytest.raises(VmUnavailable, match="lists no checksum for"):
        images.download_verified_image(f"{base}/img/{NAME}", tmp_path)
    assert f"/img/{NAME}" not in routes.requests


def test_http_error_on_the_image(http_server, tmp_path) -> None:
    base, routes = http_server
    routes["/img/SHA512SUMS"] = sums(IMAGE)
    with pytest.raises(VmUnavailable, match="HTTP 404"):
        images.download_verified_image(f"{base}/img/{NAME}", tmp_path)
    assert [f for f in files_in(tmp_path) if not f.endswith(".lock")] == []


def test_offline_uses_a_cached_copy_that_still_verifies(http_server, tmp_path) -> None:
    base, routes = http_server
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(IMAGE)
    path = images.download_verified_image(f"{base}/img/{NAME}", tmp_path)
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    assert images.download_verified_image(f"http://127.0.0.1:9/img/{NAME}", tmp_path) == path
    path.write_bytes(b"corrupted")
    with pytest.raises(images.Unreachable):
        images.download_verified_image(f"http://127.0.0.1:9/img/{NAME}", tmp_path)


def test_local_image_path_and_file_url(tmp_path) -> None:
    import subprocess

    img = tmp_path / "my image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "1G"], check=True)
    for url in (str(img), img.as_uri()):
        base = images.ensure_base_image(url, tmp_path / "cache", "amd64", "http://x")
        assert base.disk == img and base.format == "qcow2" and base.kernel is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "/nonexistent/image.qcow2",
            "QEMU_VM_IMAGE_URL: no image file at /nonexistent/image.qcow2",
        ),
        ("ftp://example.org/x.qcow2", "is not an http(s) URL, a file path or debian:<suite>"),
        ("debian:Trixie;rm", "debian:Trixie;rm: not a Debian suite name"),
    ],
)
def test_bad_image_urls(tmp_path, url, message) -> None:
    with pytest.raises(UsageError) as e:
        images.ensure_base_image(url, tmp_path, "amd64", "http://deb.debian.org/debian")
    assert message in str(e.value)


def test_build_key_follows_recipe() -> None:
    assert images.build_key("trixie", "amd64") == images.build_key("trixie", "amd64")
    assert images.build_key("trixie", "amd64") != images.build_key("trixie", "arm64")
    assert images.build_key("trixie", "amd64") != images.build_key("forky", "amd64")


def test_unreachable_server_gives_the_reason_not_the_pool_internals(tmp_path) -> None:
    with pytest.raises(images.Unreachable) as e:
        images.download_verified_image(f"http://127.0.0.1:9/img/{NAME}", tmp_path)
    assert str(e.value) == "cannot reach http://127.0.0.1:9/img/SHA512SUMS: Connection refused"
