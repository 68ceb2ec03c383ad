"""A pushed archive taken apart as untrusted input (viewer/archive.py, issue 25 item 6):
what tar tools make is unpacked as it was; every hostile archive is refused with its
status (400, or 413 past a limit) before anything is written."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from resultsfixtures import gz, member, raw_tar, tree_digest

from patchbay_vm_tasks.viewer import archive


def take(tmp_path: Path, body: bytes, limits: archive.Limits | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "body.tar.gz"
    src.write_bytes(body)
    dest = tmp_path / "tree"
    dest.mkdir()
    archive.take_apart(src, dest, limits or archive.Limits())
    return dest


def refused(tmp_path: Path, body: bytes, limits: archive.Limits | None = None) -> archive.Refused:
    with pytest.raises(archive.Refused) as e:
        take(tmp_path, body, limits)
    # Nothing was written: the folder it would have gone into is still empty.
    assert list((tmp_path / "tree").iterdir()) == []
    return e.value


def sample(root: Path) -> Path:
    src = root / "src"
    deep = src / "crate" / ("m" * 120) / "t"
    deep.mkdir(parents=True)
    (src / "run.json").write_text('{"project": "p"}')
    (deep / "events.jsonl").write_text('{"opid": 0}\n')
    (deep / ("long-" + "n" * 110 + ".log")).write_bytes(bytes(range(256)) * 1000)
    (src / "crate" / "ünïcode.txt").write_text("ü")
    (src / "empty").mkdir()
    return src


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar-ish"])
def test_what_gnu_tar_makes_unpacks_as_it_was(tmp_path: Path, fmt: str) -> None:
    src = sample(tmp_path)
    out = tmp_path / "a.tgz"
    args = ["tar", "-czf", str(out), "-C", str(src), "."]
    if fmt == "pax":
        args.insert(1, "--format=pax")
    if fmt == "ustar-ish":  # the members without `./`
        args = ["tar", "-czf", str(out), "-C", str(src), "run.json", "crate", "empty"]
    subprocess.run(args, check=True)
    dest = take(tmp_path, out.read_bytes())
    assert tree_digest(dest) == tree_digest(src)
    assert (dest / "empty").is_dir()


def test_what_python_makes_unpacks_as_it_was(tmp_path: Path) -> None:
    src = sample(tmp_path)
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
            tar.add(src, arcname="top")
        dest = take(tmp_path / str(fmt), buf.getvalue())
        assert tree_digest(dest / "top") == tree_digest(src)


def test_files_get_plain_modes(tmp_path: Path) -> None:
    body = raw_tar(
        [member("a/x", b"1", mode=0o4777), member("b", kind=tarfile.DIRTYPE, mode=0o777)]
    )
    dest = take(tmp_path, body)
    assert (dest / "a" / "x").stat().st_mode & 0o7777 == 0o644
    assert (dest / "b").stat().st_mode & 0o7777 == 0o755


HOSTILE = {
    "dotdot": ([member("../evil", b"x")], 400, "'..'"),
    "dotdot-deep": ([member("a/../../evil", b"x")], 400, "'..'"),
    "absolute": ([member("/etc/evil", b"x")], 400, "absolute"),
    "drive": ([member("C:/evil", b"x")], 400, "absolute"),
    "symlink": ([member("l", kind=tarfile.SYMTYPE, linkname="/etc/passwd")], 400, "link"),
    "hardlink": ([member("f", b"x"), member("h", kind=tarfile.LNKTYPE, linkname="f")], 400, "link"),
    "chardev": ([member("c", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)], 400, "device"),
    "blockdev": ([member("b", kind=tarfile.BLKTYPE, devmajor=8, devminor=0)], 400, "device"),
    "fifo": ([member("p", kind=tarfile.FIFOTYPE)], 400, "FIFO"),
    "backslash": ([member("a\\..\\evil", b"x")], 400, "plain relative"),
    "control": ([member("a\nb", b"x")], 400, "control character"),
    "twice": ([member("a", b"1"), member("a", b"2")], 400, "twice"),
    "file-then-below": ([member("a", b"1"), member("a/b", b"2")], 400, "below a file"),
    "dir-and-file": ([member("a/b", b"1"), member("a", b"2")], 400, "twice"),
    "file-at-top": ([member(".", b"1")], 400, "top folder"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_before_anything_is_written(tmp_path: Path, case: str) -> None:
    members, status, words = HOSTILE[case]
    # A good file first: it must not be written either.
    err = refused(tmp_path, raw_tar([member("good.txt", b"fine"), *members]))
    assert err.status == status and words in err.message, err.message
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_a_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("x")
    info.size = 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"1"))
    raw = bytearray(buf.getvalue())
    raw[0] = 0xFF  # the name's first byte, and the checksum made right again
    raw[148:156] = b" " * 8
    raw[148:155] = b"%06o\x00" % sum(raw[:512])
    err = refused(tmp_path, gz(bytes(raw)))
    assert err.status == 400 and "UTF-8" in err.message


def test_limits_are_413(tmp_path: Path) -> None:
    many = [member(f"f{i}", b"x") for i in range(30)]
    assert refused(tmp_path / "a", raw_tar(many), archive.Limits(max_members=20)).status == 413
    big = [member("big", b"\0" * 5000)]
    err = refused(tmp_path / "b", raw_tar(big), archive.Limits(max_unpacked=4000))
    assert err.status == 413 and "unpacks to more than" in err.message


def test_a_gzip_bomb_is_stopped_at_the_unpacked_limit(tmp_path: Path) -> None:
    # 200 MB of zeros in one member compresses to about 200 kB.
    info = tarfile.TarInfo("zeros")
    info.size = 200 * 1000 * 1000
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = comp.compress(header)
    chunk = bytes(1 << 20)
    for _ in range(info.size // len(chunk) + 1):
        body += comp.compress(chunk)
    body += comp.flush()
    assert len(body) < 1_000_000
    err = refused(tmp_path, body, archive.Limits(max_unpacked=50 * 1000 * 1000))
    assert err.status == 413


def test_a_huge_extended_header_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    # A GNU long name of 5 MB: the standard library would read it into memory whole.
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 5 * 1000 * 1000
    data = info.tobuf(format=tarfile.GNU_FORMAT) + b"a" * info.size + bytes(512 - info.size % 512)
    err = refused(tmp_path, gz(data + bytes(1024)))
    assert err.status == 400 and "extended header" in err.message


def test_pax_records_that_could_make_parsers_disagree(tmp_path: Path) -> None:
    pax = [member("a", b"12345", pax_headers={"size": "5"})]
    assert (take(tmp_path / "ok", raw_tar(pax, tarfile.PAX_FORMAT)) / "a").read_bytes() == b"12345"
    sparse = [member("s", b"1", pax_headers={"GNU.sparse.size": "1"})]
    err = refused(tmp_path / "b", raw_tar(sparse, tarfile.PAX_FORMAT))
    assert "sparse" in err.message
    glob = tarfile.TarInfo("g")
    glob.type = tarfile.XGLTYPE
    glob.pax_headers = {"path": "../../evil"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(glob)
        i, d = member("x", b"1")
        tar.addfile(i, io.BytesIO(d))
    err = refused(tmp_path / "c", buf.getvalue())
    assert err.status == 400


BROKEN = {
    "not-gzip": (b"PK\x03\x04 a zip", "not gzip"),
    "empty-gzip": (gz(b""), "empty"),
    "not-tar": (gz(b"hello world" * 100), "not a tar"),
    "only-end": (gz(bytes(1024)), "no member"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_archives_are_400(tmp_path: Path, case: str) -> None:
    body, words = BROKEN[case]
    err = refused(tmp_path, body)
    assert err.status == 400 and words in err.message, err.message


def test_cut_short_anywhere_is_400(tmp_path: Path) -> None:
    good = raw_tar([member("a", b"x" * 3000), member("b", b"y" * 3000)])
    plain = gzip.decompress(good)
    # in a header, in a file, after the last file without the end marker
    for n, cut in enumerate((10, 600, 2000, 512 + 3072 + 512 + 3072)):
        # a gzip stream cut short, and a whole gzip stream of a tar cut short
        err = refused(tmp_path / f"g{n}", good[: len(good) * cut // len(plain)] or good[:5])
        assert err.status == 400
        err = refused(tmp_path / f"t{n}", gz(plain[:cut]))
        assert err.status == 400, (cut, err.message)
