"""`vm.ssh` through the OpenSSH client: its command line and the kept master."""

from __future__ import annotations

import shlex
import socket
import subprocess

import pytest

from patchbay_vm_tasks.vm import openssh
from patchbay_vm_tasks.vm.state import StateDir

PORT, USER = 2222, "dev"  # the VM's, from its record


def _option(argv: list[str], name: str) -> str | None:
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-o"]
    found = [v.split("=", 1)[1] for v in values if v.split("=", 1)[0] == name]
    return found[-1] if found else None


def test_a_command_is_quoted_once_for_the_guest_shell(tmp_path) -> None:
    state = StateDir(tmp_path)
    argv = openssh.argv("/usr/bin/ssh", state, PORT, USER, ["printf", "[%s]", "two words", "$HOME"])
    assert argv[0] == "/usr/bin/ssh"
    assert argv[-3:] == ["--", "dev@127.0.0.1", "printf '[%s]' 'two words' '$HOME'"]
    assert shlex.split(argv[-1]) == ["printf", "[%s]", "two words", "$HOME"]
    assert "-T" in argv and "-t" not in argv
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id_ed25519")
    # The pinned key only, checked strictly.
    assert _option(argv, "StrictHostKeyChecking") == "yes"
    assert _option(argv, "UserKnownHostsFile") == str(tmp_path / "known_hosts")
    assert _option(argv, "IdentitiesOnly") == "yes"


def test_no_command_asks_for_a_terminal(tmp_path) -> None:
    argv = openssh.argv("ssh", StateDir(tmp_path), PORT, USER, None)
    assert argv[-3:] == ["-t", "--", "dev@127.0.0.1"]


@pytest.mark.parametrize(
    ("platform", "kept"), [("linux", True), ("darwin", True), ("win32", False)]
)
def test_the_connection_is_kept_except_on_windows(tmp_path, platform, kept) -> None:
    argv = openssh.argv("ssh", StateDir(tmp_path), PORT, USER, ["true"], platform=platform)
    if kept:
        assert _option(argv, "ControlMaster") == "auto"
        assert _option(argv, "ControlPath") == str(tmp_path / "ssh.ctl")
        assert _option(argv, "ControlPersist") == openssh.CONTROL_PERSIST
    else:  # Windows' OpenSSH has no ControlMaster
        assert _option(argv, "ControlMaster") is None
        assert _option(argv, "ControlPath") is None


def test_percent_in_the_path_is_not_an_ssh_token(tmp_path) -> None:
    state = StateDir(tmp_path / "100%done")
    argv = openssh.argv("ssh", state, PORT, USER, ["true"], platform="linux")
    assert _option(argv, "ControlPath") == str(tmp_path / "100%%done" / "ssh.ctl")


def test_a_deep_state_dir_gets_a_short_socket_path(tmp_path) -> None:
    deep = StateDir(tmp_path / ("d" * 120) / ".qemu-vm" / "dev")
    path = openssh.control_path(deep)
    assert path.parent != deep.root
    assert len(str(path).encode()) <= 104 - 18
    # Stable per state dir, different between them.
    assert openssh.control_path(deep) == path
    assert openssh.control_path(StateDir(deep.root.parent / "other")) != path
    short = StateDir(tmp_path)
    assert openssh.control_path(short) == tmp_path / "ssh.ctl"


def test_stop_master_without_a_master_does_nothing(tmp_path) -> None:
    assert openssh.stop_master(StateDir(tmp_path)) is False


def test_stop_master_removes_a_stale_socket(tmp_path) -> None:
    # A master killed with SIGKILL leaves its socket behind; nobody listens on it.
    path = tmp_path / "ssh.ctl"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    assert path.exists()
    assert openssh.stop_master(StateDir(tmp_path)) is True
    assert not path.exists()


def test_on_windows_ssh_runs_as_a_child_and_its_exit_code_comes_back(monkeypatch) -> None:
    seen = []

    def fake_run(argv, check):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 7)

    monkeypatch.setattr(openssh.subprocess, "run", fake_run)
    monkeypatch.setattr(openssh.os, "execv", lambda *a: pytest.fail("no exec on Windows"))
    assert openssh.hand_over(["ssh", "-T", "vm", "exit 7"], platform="win32") == 7
    assert seen == [["ssh", "-T", "vm", "exit 7"]]


def test_elsewhere_this_process_becomes_ssh(monkeypatch) -> None:
    class Replaced(Exception):
        pass

    def fake_execv(path, argv):
        raise Replaced(path, argv)

    monkeypatch.setattr(openssh.os, "execv", fake_execv)
    with pytest.raises(Replaced) as caught:
        openssh.hand_over(["/usr/bin/ssh", "-T", "vm", "true"], platform="linux")
    assert caught.value.args == ("/usr/bin/ssh", ["/usr/bin/ssh", "-T", "vm", "true"])
