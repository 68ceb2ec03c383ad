"""Downloads go through the proxy the usual variables name (requests reads them);
a server that does not accept a connection is given up on after a few seconds."""

from __future__ import annotations

import socket

import pytest

from patchbay_vm_tasks import downloads

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_http_proxy_is_used(http_server, no_proxy_env) -> None:
    proxy, routes = http_server  # a plain HTTP proxy gets the absolute URL as the path
    routes["http://images.example/SHA512SUMS"] = b"abc  x.qcow2\n"
    no_proxy_env.setenv("HTTP_PROXY", proxy)
    assert downloads.fetch_text("http://images.example/SHA512SUMS") == "abc  x.qcow2\n"
    assert routes.requests == ["http://images.example/SHA512SUMS"]


def test_no_proxy_bypasses_it(http_server, no_proxy_env) -> None:
    proxy, routes = http_server
    no_proxy_env.setenv("http_proxy", proxy)
    no_proxy_env.setenv("no_proxy", "127.0.0.1")
    with pytest.raises(downloads.Unreachable, match="Connection refused"):
        downloads.fetch_text("http://127.0.0.1:9/x")  # straight to the closed port
    assert routes.requests == []


def test_https_proxy_is_asked_for_a_tunnel(http_server, no_proxy_env) -> None:
    proxy, routes = http_server  # it knows no CONNECT: answers 501
    no_proxy_env.setenv("HTTPS_PROXY", proxy)
    with pytest.raises(downloads.Unreachable, match="501"):
        downloads.fetch_text("https://images.example/SHA512SUMS")


def test_every_request_carries_the_default_timeouts(tmp_path, monkeypatch) -> None:
    """requests waits forever without a timeout: each download path must pass one (a few
    seconds to connect, longer to read)."""
    import requests

    seen: list[object] = []

    def fake_get(url: str, **kwargs: object) -> requests.Response:
        seen.append(kwargs.get("timeout"))
        raise requests.ConnectTimeout("stand-in")

    monkeypatch.setattr(requests, "get", fake_get)
    with pytest.raises(downloads.Unreachable, match="stand-in"):
        downloads.fetch_text("http://images.example/SHA512SUMS")
    with pytest.raises(downloads.Unreachable, match="stand-in"):
        downloads.download("http://images.example/x.qcow2", tmp_path / "x.qcow2")
    assert seen == [downloads.DEFAULT_TIMEOUT] * 2
    connect, read = downloads.DEFAULT_TIMEOUT
    assert 1 <= connect <= 10 and read >= connect
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_a_server_that_accepts_and_stays_silent_is_given_up_on(no_proxy_env) -> None:
    """The read timeout is honoured: the request ends as Unreachable, not in a hang."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with pytest.raises(downloads.Unreachable, match="timed out"):
            downloads.fetch_text(f"http://127.0.0.1:{port}/x", timeout=(5.0, 0.5))
