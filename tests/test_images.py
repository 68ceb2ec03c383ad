"""Base images: checksum-verified downloads (a local HTTP server stands in for
cloud.debian.org, which this machine cannot reach), local paths, bad URLs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from patchbay_vm_tasks import downloads
from patchbay_vm_tasks.errors import UsageError, VmUnavailable
from patchbay_vm_tasks.vm import images

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


def disk_with(tmp_path: Path, offset: int, magic: bytes, fmt: str = "raw") -> Path:
    """A small disk image with `magic` at `offset` (as a partition table or a filesystem
    puts it there), raw or converted to `fmt`."""
    raw = tmp_path / "disk.raw"
    data = bytearray(1 << 20)
    data[offset : offset + len(magic)] = magic
    raw.write_bytes(bytes(data))
    if fmt == "raw":
        return raw
    out = tmp_path / f"my image.{fmt}"
    subprocess.run(["qemu-img", "convert", "-q", "-O", fmt, str(raw), str(out)], check=True)
    return out


def test_local_image_path_and_file_url(tmp_path) -> None:
    img = disk_with(tmp_path, 510, b"\x55\xaa", "qcow2")
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


@pytest.mark.parametrize(
    ("offset", "magic", "fmt", "found"),
    [
        (510, b"\x55\xaa", "raw", "an MBR partition table"),
        (512, b"EFI PART", "raw", "a GPT partition table"),
        (1080, b"\x53\xef", "raw", "an ext filesystem"),
        (512, b"EFI PART", "qcow2", "a GPT partition table"),  # looked at through qemu-img dd
    ],
)
def test_disk_images_with_a_partition_table_or_filesystem_are_accepted(
    tmp_path, offset, magic, fmt, found
) -> None:
    path = disk_with(tmp_path, offset, magic, fmt)
    assert images.inspect_image(path) == fmt
    assert images.describe_boot_content(magic.rjust(offset + len(magic), b"\0")) == found


def test_a_text_file_is_refused_saying_what_it_is(tmp_path) -> None:
    path = tmp_path / "hostname"
    path.write_text("myhost\n")
    with pytest.raises(UsageError) as e:
        images.ensure_base_image(str(path), tmp_path / "cache", "amd64", "http://x")
    assert e.value.exit_code == 2
    assert "no partition table and no filesystem" in str(e.value)
    assert "7 bytes of text starting 'myhost\\n'" in str(e.value)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_an_empty_disk_is_refused(tmp_path, fmt) -> None:
    path = tmp_path / f"empty.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "64M"], check=True)
    with pytest.raises(UsageError, match="an empty disk"):
        images.inspect_image(path)


def test_a_file_qemu_img_cannot_read_is_refused(tmp_path) -> None:
    path = tmp_path / "broken.qcow2"
    path.write_bytes(b"QFI\xfb" + b"\xff" * 100)  # a qcow2 magic with a nonsense header
    with pytest.raises(UsageError, match="not a disk image qemu-img can read"):
        images.inspect_image(path)


# --- the cache is used without the network; the daily check ----------------------


def stale(stamp: Path) -> None:
    old = time.time() - downloads.ONE_DAY - 60
    os.utime(stamp, (old, old))


def test_a_cached_image_is_used_without_the_network_until_the_daily_check(
    http_server, tmp_path, capsys
) -> None:
    base, routes = http_server
    url = f"{base}/img/{NAME}"
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(IMAGE)
    path = images.cached_or_downloaded_image(url, tmp_path)
    assert routes.requests == ["/img/SHA512SUMS", f"/img/{NAME}"]
    assert "downloading " + url in capsys.readouterr().err

    routes.requests.clear()
    assert images.cached_or_downloaded_image(url, tmp_path) == path
    assert routes.requests == []  # no network at all
    assert f"using cached image {path}" in capsys.readouterr().err

    # --refresh asks at once; a day later it asks by itself; a new image is downloaded.
    assert images.cached_or_downloaded_image(url, tmp_path, refresh=True) == path
    assert routes.requests == ["/img/SHA512SUMS"]
    assert "(the newest published)" in capsys.readouterr().err
    newer = IMAGE + b"v2"
    routes[f"/img/{NAME}"] = newer
    routes["/img/SHA512SUMS"] = sums(newer)
    assert images.cached_or_downloaded_image(url, tmp_path) == path  # checked today already
    stale(downloads.stamp_for(tmp_path, url))
    routes.requests.clear()
    new_path = images.cached_or_downloaded_image(url, tmp_path)
    assert new_path != path and new_path.read_bytes() == newer
    assert routes.requests == ["/img/SHA512SUMS", f"/img/{NAME}"]
    assert path.exists()  # the old one may back an existing VM's overlay


def test_offline_daily_check_uses_the_cache_and_waits_a_day(http_server, tmp_path) -> None:
    base, routes = http_server
    routes[f"/img/{NAME}"] = IMAGE
    routes["/img/SHA512SUMS"] = sums(IMAGE)
    path = images.cached_or_downloaded_image(f"{base}/img/{NAME}", tmp_path)
    offline = f"http://127.0.0.1:9/img/{NAME}"  # another URL, same file name: same cache
    stamp = downloads.stamp_for(tmp_path, offline)
    assert not stamp.exists()
    assert images.cached_or_downloaded_image(offline, tmp_path) == path
    assert not downloads.check_due(stamp)  # no second attempt today


def test_unreachable_falls_back_to_a_cached_build_without_saying_building(tmp_path, capsys) -> None:
    build = images._build_dir(images.FALLBACK_SUITE, "amd64", tmp_path)
    build.mkdir(parents=True)
    (build / "build.json").write_text("{}")
    image = images.ensure_base_image(
        f"http://127.0.0.1:9/img/{NAME}", tmp_path, "amd64", "http://x"
    )
    assert image.disk == build / "disk.qcow2" and image.kernel == build / "vmlinuz"
    err = capsys.readouterr().err
    assert "using the cached debian:trixie guest image instead" in err
    assert "building" not in err


@pytest.mark.parametrize(
    ("age", "refresh", "due"),
    [
        (None, False, True),  # never checked
        (60.0, False, False),
        (downloads.ONE_DAY - 60, False, False),
        (downloads.ONE_DAY + 60, False, True),
        (60.0, True, True),
        (-3600.0, False, True),  # a stamp from the future (clock changed): check
    ],
)
def test_daily_check_rule(tmp_path, age, refresh, due) -> None:
    stamp = downloads.stamp_for(tmp_path, "https://example.org/x")
    now = 1_700_000_000.0
    if age is not None:
        downloads.mark_checked(stamp)
        os.utime(stamp, (now - age, now - age))
    assert downloads.check_due(stamp, refresh=refresh, now=now) is due


def test_stamps_differ_per_key(tmp_path) -> None:
    a = downloads.stamp_for(tmp_path, "https://a/x")
    assert a != downloads.stamp_for(tmp_path, "https://b/x")
    assert a.parent == tmp_path and a.name.startswith(".checked-")
