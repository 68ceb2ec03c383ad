"""Which Host headers name the viewer, and the URLs by which other machines reach it.

The Host check is the viewer's defence against DNS rebinding: a page on another site can
make a browser send it requests, but their Host header carries that site's name, which
is not one of ours. What is ours depends on the bind:

- a loopback address (the default, 127.0.0.1) or `localhost`: `localhost`, `127.0.0.1`,
  `[::1]` and the bound address;
- all addresses (`0.0.0.0`, or `::`, which here also takes IPv4): the machine's names
  (host name, its canonical name and FQDN, `<host name>.local`), every address of its
  interfaces (IPv4 only for `0.0.0.0`), `localhost`, `127.0.0.1` and `[::1]`;
- one other address: that address and the machine's names that resolve to it.

A name given as the bind's host is accepted too, and every value only with the bound
port (or without one on port 80, as a browser sends it). An address literal is compared
as an address (`[2001:DB8::1]` is `[2001:db8::1]`). For an all-addresses bind an address
that is not known yet (the machine joined a network since) makes the interfaces be read
again, at most once every REFRESH_S seconds.

Interface addresses come from the standard library alone: on Linux the kernel's list
(an RTM_GETADDR dump over a route netlink socket), elsewhere the source addresses of
the default routes (a UDP socket connected, which sends nothing) and what the host
name resolves to.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: frozenset[Address] = frozenset(
    {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
)
# Re-reading the interfaces for an unknown address literal: at most this often.
REFRESH_S = 5.0


def parse_address(text: str) -> Address | None:
    """An IP address without brackets or zone (`fe80::1%eth0` -> fe80::1), else None."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


# ---------------------------------------------------------------- the machine's addresses

_NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def _align(n: int) -> int:
    return (n + 3) & ~3


def _netlink_addresses() -> set[Address]:
    """Linux: every address of every interface, as `ip addr` lists them. OSError elsewhere."""
    found: set[Address] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # 0: NETLINK_ROUTE
        sock.settimeout(2.0)
        sock.bind((0, 0))
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        flags = _NLM_F_REQUEST | _NLM_F_DUMP
        sock.send(_NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), _RTM_GETADDR, flags, 1, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return found
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind = _NLMSG_HDR.unpack_from(data, offset)[:2]
                if kind == _NLMSG_DONE or length < _NLMSG_HDR.size:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError("netlink refused the address dump")
                if kind == _RTM_NEWADDR:
                    found |= _addresses_of(data[offset + _NLMSG_HDR.size : offset + length])
                offset += _align(length)


def _addresses_of(message: bytes) -> set[Address]:
    """The local address of one RTM_NEWADDR message: IFA_LOCAL when present (on a
    point-to-point link IFA_ADDRESS is the peer's), else IFA_ADDRESS."""
    if len(message) < _IFADDRMSG.size:
        return set()
    family = _IFADDRMSG.unpack_from(message)[0]
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    attrs: dict[int, bytes] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(message):
        length, kind = _RTATTR.unpack_from(message, offset)
        if length < _RTATTR.size:
            break
        attrs[kind] = message[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
    return {ipaddress.ip_address(raw)} if raw is not None and len(raw) == size else set()


def _route_source_addresses() -> set[Address]:
    """The addresses this machine sends from on its default routes (a UDP socket
    connected to a documentation address: nothing is sent)."""
    found: set[Address] = set()
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            address = parse_address(sock.getsockname()[0])
            if address is not None and not address.is_unspecified:
                found.add(address)
    return found


def interface_addresses() -> set[Address]:
    """The addresses of this machine's interfaces (loopback included)."""
    try:
        found = _netlink_addresses()
    except (OSError, AttributeError, ValueError):  # not Linux (no AF_NETLINK), or refused
        found = set()
    return found | _route_source_addresses() | set(LOOPBACK)


def _resolve(name: str) -> set[Address]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {a for info in infos if (a := parse_address(str(info[4][0]))) is not None}


def _is_localhost(name: str) -> bool:
    return name == "localhost" or name.startswith("localhost.") or name.startswith("ip6-")


def machine_names() -> set[str]:
    """This machine's names, lower case: the host name, its canonical name and FQDN, and
    `<host name>.local` (mDNS) for a host name without a dot. Never `localhost*`."""
    host = socket.gethostname().lower()
    names = {host} if host else set()
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME):
            names.add(info[3].lower())
    with contextlib.suppress(OSError, UnicodeError):
        names.add(socket.getfqdn(host).lower())  # may be `localhost` on a Debian /etc/hosts
    if host and "." not in host:
        names.add(f"{host}.local")
    return {n.rstrip(".") for n in names if n and not _is_localhost(n) and parse_address(n) is None}


# ---------------------------------------------------------------- the check


def _url_host(host: str | Address) -> str:
    address = host if not isinstance(host, str) else parse_address(host)
    return f"[{address}]" if address is not None and address.version == 6 else str(host)


class Hosts:
    """The Host header values that name a server bound to `bound` (the address it got),
    asked for as `host` (as the user wrote it: an address or a name)."""

    def __init__(self, host: str, bound: str, port: int) -> None:
        self.port = port
        address = parse_address(bound)
        if address is None:  # an AF_UNIX path or the like: only the name as given
            address = ipaddress.ip_address("127.0.0.1")
        self.all_addresses = address.is_unspecified
        # Other machines can reach it: the runs are visible to the network.
        self.network = not address.is_loopback
        # `::` takes IPv4 too (the server clears IPV6_V6ONLY); `0.0.0.0` only IPv4.
        self.versions = {4, 6} if address.version == 6 else {4}
        self.lock = threading.Lock()
        self.refreshed = time.monotonic()
        given = host.strip("[]").lower()
        if self.all_addresses:
            self.names = machine_names()
            self.addresses = self._ours(interface_addresses())
            self.public = sorted(
                (a for a in self.addresses if not (a.is_loopback or a.is_link_local)),
                key=lambda a: (a.version, a),
            )
            self.names_shown = sorted(n for n in self.names if not n.endswith(".local"))
            self.names.add("localhost")
            self.local_url = "http://127.0.0.1" if address.version == 4 else "http://[::1]"
        elif address.is_loopback:
            self.names = {"localhost"}
            self.addresses = set(LOOPBACK) | {address}
            self.public, self.names_shown = [], []
            self.local_url = f"http://{_url_host(address)}"
        else:
            self.names = {n for n in machine_names() if address in _resolve(n)}
            self.addresses = {address}
            self.public = [address]
            self.names_shown = sorted(self.names)
            self.local_url = f"http://{_url_host(address)}"
        if given and parse_address(given) is None:
            self.names.add(given)
            if not address.is_loopback and given not in self.names_shown:
                self.names_shown.insert(0, given)
        self.local_url += f":{port}/"

    def _ours(self, addresses: Iterable[Address]) -> set[Address]:
        return {a for a in set(addresses) | LOOPBACK if a.version in self.versions}

    def urls(self) -> list[str]:
        """The URLs to give other machines: the names first, then the addresses."""
        shown = [*self.names_shown, *self.public]
        return [f"http://{_url_host(h)}:{self.port}/" for h in shown]

    def values(self) -> set[str]:
        """Every accepted Host header value (addresses in their canonical form)."""
        hosts = [*self.names, *(_url_host(a) for a in self.addresses)]
        out = {f"{h}:{self.port}" for h in hosts}
        return out | set(hosts) if self.port == 80 else out

    def allows(self, header: str | None) -> bool:
        parsed = split_host_header(header or "")
        if parsed is None:
            return False
        host, port = parsed
        if port != self.port and not (port is None and self.port == 80):
            return False
        if isinstance(host, str):
            return host in self.names
        if host in self.addresses:
            return True
        if self.all_addresses and host.version in self.versions:
            with self.lock:
                if time.monotonic() - self.refreshed >= REFRESH_S:
                    self.refreshed = time.monotonic()
                    self.addresses = self._ours(interface_addresses())
                return host in self.addresses
        return False


def split_host_header(header: str) -> tuple[str | Address, int | None] | None:
    """`name:port`, `1.2.3.4:port`, `[v6]:port` (port optional) -> (lower-case name or
    address, port); None when malformed (an IPv6 address must be in brackets)."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else "-"
        if rest and not rest.startswith(":"):
            return None
        address = parse_address(text[1:end])
        if address is None or address.version != 6 or "%" in text[1:end]:
            return None
        host: str | Address = address
        port = rest[1:] if rest else None
    else:
        name, sep, port_text = text.rpartition(":")
        name, port = (name, port_text) if sep else (text, None)
        if not name or ":" in name or "[" in name or "]" in name:
            return None
        literal = parse_address(name)
        if literal is not None and (literal.version != 4 or "%" in name):
            return None
        host = literal if literal is not None else name.removesuffix(".")
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit() and 0 < len(port) <= 5):
        return None
    return host, int(port)
