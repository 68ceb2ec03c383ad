"""A tiny rtnetlink client that applies `ip -batch` lines of the lab without starting `ip`.

Processes are expensive in an emulated guest (one `ip` exec costs tens of milliseconds
there), so the lab configures its namespaces from a thread that has entered each one
(`lab.in_netns`) and speaks netlink itself. It understands exactly the line forms that
`simcore.netconfig.namespace_batches` writes, so that text stays the one description of
the lab (and `ip -batch` could run it unchanged):

    link set DEV [master BRIDGE] up|down
    link add NAME type bridge
    addr add IP/PLEN dev DEV [nodad]
    route add|replace default|CIDR via GW [dev DEV]
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTN_UNICAST = 1
IFF_UP = 0x1


class RtnlError(Exception):
    """A line that netlink refused (message: the line and the kernel's reason)."""


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def _ifname(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


class Rtnl:
    """A NETLINK_ROUTE socket of the calling thread's current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, kind: int, flags: int, body: bytes) -> None:
        """Send one request and wait for its acknowledgement; raise OSError on refusal."""
        self.seq += 1
        header = struct.pack(
            "=LHHLL", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0
        )
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _, seq, _ = struct.unpack_from("=LHHLL", data, offset)
                if mtype == NLMSG_ERROR and seq == self.seq:
                    (err,) = struct.unpack_from("=i", data, offset + 16)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return
                offset += (length + 3) & ~3

    def index(self, name: str) -> int:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            raise OSError(19, f"Cannot find device {name!r}") from None

    def link_set(self, name: str, up: bool | None, master: str | None = None) -> None:
        attrs = _ifname(name)
        if master is not None:
            attrs += _attr(IFLA_MASTER, struct.pack("=I", self.index(master)))
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, flags, change) + attrs
        self.request(RTM_NEWLINK, 0, body)

    def bridge_add(self, name: str) -> None:
        kind = _attr(IFLA_INFO_KIND, b"bridge\0")
        body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
        body += _ifname(name) + _attr(IFLA_LINKINFO, kind)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def addr_add(self, cidr: str, dev: str, nodad: bool) -> None:
        iface = ipaddress.ip_interface(cidr)
        family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
        flags = IFA_F_NODAD if nodad else 0
        packed = iface.ip.packed
        body = struct.pack("=BBBBI", family, iface.network.prefixlen, flags, 0, self.index(dev))
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        if flags:
            body += _attr(IFA_FLAGS, struct.pack("=I", flags))
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def route(self, dst: str, via: str, dev: str | None, replace: bool) -> None:
        gw = ipaddress.ip_address(via)
        net = ipaddress.ip_network("::/0" if gw.version == 6 else "0.0.0.0/0")
        if dst != "default":
            net = ipaddress.ip_network(dst)
        family = socket.AF_INET6 if gw.version == 6 else socket.AF_INET
        body = struct.pack(
            "=BBBBBBBBI", family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST, 0
        )
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        body += _attr(RTA_GATEWAY, gw.packed)
        if dev is not None:
            body += _attr(RTA_OIF, struct.pack("=I", self.index(dev)))
        flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
        self.request(RTM_NEWROUTE, flags, body)

    def apply(self, line: str) -> None:
        """Apply one `ip -batch` line of the forms in the module docstring."""
        op, args = parse(line)
        try:
            getattr(self, op)(*args)
        except OSError as e:
            raise RtnlError(f"{line!r}: {e.strerror or e}") from None


def parse(line: str) -> tuple[str, tuple]:
    """(method of Rtnl, its arguments) for one line; RtnlError for any other form."""
    w = line.split()
    n = len(w)
    if w[:2] == ["link", "set"] and n in (4, 6) and w[-1] in ("up", "down"):
        if n == 4:
            return "link_set", (w[2], w[3] == "up", None)
        if w[3] == "master":
            return "link_set", (w[2], w[5] == "up", w[4])
    elif w[:2] == ["link", "add"] and n == 5 and w[3:] == ["type", "bridge"]:
        return "bridge_add", (w[2],)
    elif w[:2] == ["addr", "add"] and n in (5, 6) and w[3] == "dev":
        if n == 5 or w[5] == "nodad":
            return "addr_add", (w[2], w[4], n == 6)
    elif w[:1] == ["route"] and n in (5, 7) and w[1] in ("add", "replace") and w[3] == "via":  # noqa: SIM102 (one form per branch)
        if n == 5 or w[5] == "dev":
            return "route", (w[2], w[4], w[6] if n == 7 else None, w[1] == "replace")
    raise RtnlError(f"{line!r}: not a line this client understands")


def apply_lines(lines: list[str]) -> None:
    """Apply `ip -batch` lines in the calling thread's network namespace, in order."""
    with Rtnl() as nl:
        for line in lines:
            nl.apply(line)
