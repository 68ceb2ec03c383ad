"""Old run folders in the work dir are pruned to a count; `latest` is never deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.sim import workdir

RUNS = [
    "sim-250102-090000",
    "sim-250101-120000-1",
    "sim-250101-120000",
    "sim-241231-235959",
    "sim-250101-120000-2",
]
OLDEST_FIRST = [
    "sim-241231-235959",
    "sim-250101-120000",
    "sim-250101-120000-1",
    "sim-250101-120000-2",
    "sim-250102-090000",
]


def make_work(tmp_path: Path, latest: str | None = None) -> Path:
    work = tmp_path / "work"
    for name in RUNS:
        (work / name / "one-sim").mkdir(parents=True)
        (work / name / "one-sim" / "sim.json").write_text("{}")
    # Things that are not run folders stay whatever their names.
    (work / "binaries").mkdir()
    (work / "sim-notes.txt").write_text("x")
    (work / "sim-2501").mkdir()
    if latest:
        os.symlink(latest, work / "latest")
    return work


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_run_dirs_oldest_first(tmp_path) -> None:
    assert names(workdir.run_dirs(make_work(tmp_path))) == OLDEST_FIRST
    assert workdir.run_dirs(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("keep", "removed"),
    [
        (20, []),
        (5, []),
        (3, OLDEST_FIRST[:2]),
        (1, OLDEST_FIRST[:4]),
        (0, []),  # 0: keep everything
    ],
)
def test_prune_keeps_the_newest(tmp_path, keep, removed) -> None:
    work = make_work(tmp_path, latest=OLDEST_FIRST[-1])
    assert names(workdir.prune_runs(work, keep)) == removed
    left = sorted(p.name for p in work.iterdir())
    assert left == sorted({*RUNS, "binaries", "sim-notes.txt", "sim-2501", "latest"} - set(removed))


def test_prune_never_deletes_what_latest_points_to(tmp_path) -> None:
    work = make_work(tmp_path, latest=OLDEST_FIRST[0])  # e.g. a clock that went back
    removed = workdir.prune_runs(work, 2)
    assert names(removed) == OLDEST_FIRST[1:3]
    assert (work / OLDEST_FIRST[0]).is_dir()
    assert workdir.latest_run(work) == work / OLDEST_FIRST[0]


@pytest.mark.parametrize(
    ("link", "latest"),
    [
        (OLDEST_FIRST[1], OLDEST_FIRST[1]),  # the link names a run: that one
        (f"./{OLDEST_FIRST[1]}/", OLDEST_FIRST[1]),
        (None, OLDEST_FIRST[-1]),  # no link: the newest
        ("sim-999999-999999", OLDEST_FIRST[-1]),  # names no folder of ours
        ("binaries", OLDEST_FIRST[-1]),  # a folder, not a run
        ("/", OLDEST_FIRST[-1]),
    ],
)
def test_latest_run_is_the_link_or_the_newest(tmp_path, link, latest) -> None:
    work = make_work(tmp_path, latest=link)
    assert workdir.latest_run(work) == work / latest
    assert workdir.latest_run(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("names", "keep", "latest", "pruned"),
    [
        (["sim-250101-120000-10", "sim-250101-120000-9"], 1, None, ["sim-250101-120000-9"]),
        (OLDEST_FIRST, 2, OLDEST_FIRST[0], OLDEST_FIRST[1:3]),
        (OLDEST_FIRST, 0, None, []),
        ([*OLDEST_FIRST, "latest", "binaries"], 4, None, OLDEST_FIRST[:1]),
    ],
)
def test_runs_to_prune(names, keep, latest, pruned) -> None:
    # One rule for the host's work dir and the guest's copy (QEMU_VM_FS=none).
    assert workdir.runs_to_prune(names, keep, latest) == pruned


def test_symlinked_run_folders_are_left_alone(tmp_path) -> None:
    work = make_work(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, work / "sim-200101-000000")
    workdir.prune_runs(work, 1)
    assert elsewhere.is_dir() and (work / "sim-200101-000000").is_symlink()


def test_keep_runs_setting(tmp_path) -> None:
    assert settings.resolve(env={}, project_dir=tmp_path).keep_runs == 20
    assert settings.resolve(env={"QEMU_VM_KEEP_RUNS": "0"}, project_dir=tmp_path).keep_runs == 0
    s = settings.resolve(config={"keep_runs": 5}, env={}, project_dir=tmp_path)
    assert s.keep_runs == 5
    with pytest.raises(settings.UsageError, match="QEMU_VM_KEEP_RUNS: must be zero or more"):
        settings.resolve(env={"QEMU_VM_KEEP_RUNS": "-1"}, project_dir=tmp_path)
