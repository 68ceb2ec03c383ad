"""A lab: the namespaces, veths, NAT and qdiscs of one topology, built and torn down.

Runs as root, standard library only. Everything lives in namespaces named
`{prefix}-{node}` plus the lab root `{prefix}-ix`; the machine's own network namespace is
never changed (veths are created directly inside the lab's namespaces).

Few processes (they are slow in an emulated guest): one `ip -batch` creates every namespace
and veth; then one thread per namespace enters it (setns) and applies that namespace's
`ip` lines over netlink (`rtnl`), writes its sysctls, and starts `nft -f -` (NAT routers)
or `tc -batch -` (region delays, initial link conditions) only where needed. A 13-namespace
public lab costs one process. `PATCHBAY_LAB_USE_IP=1` runs the lines through `ip -n NS
-batch` instead. Teardown finds the lab's processes by scanning /proc (as `ip netns pids`
does), kills them, and deletes the namespaces with one `ip -batch`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from ..simcore import addressing, model, netconfig
from ..simcore.addressing import LabPlan
from . import rtnl

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
# Configure namespaces with `ip -n NS -batch` instead of netlink from threads (debugging).
USE_IP = os.environ.get("PATCHBAY_LAB_USE_IP") == "1"


class LabError(Exception):
    """A lab operation that failed; the message is fit for sim.json (e.g. tc's stderr)."""


Emit = Callable[[str, dict], None]


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ns_inode(ns: str) -> int:
    return os.stat(os.path.join(NETNS_DIR, ns)).st_ino


def in_netns(ns: str, work: Callable[[], Any]) -> Any:
    """Run `work` on a fresh thread that has entered namespace `ns` (only that thread
    moves; it ends afterwards). Children it starts are born in `ns`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            # Never act in the wrong namespace (the machine's own above all).
            if os.stat("/proc/thread-self/ns/net").st_ino != _ns_inode(ns):
                raise LabError(f"could not enter namespace {ns}")
            box["value"] = work()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _configure_plain(ns: str, lines: list[str], values: dict[str, str]) -> None:
    """Apply `ip` lines (netlink) and sysctls in the current thread's namespace `ns`."""
    try:
        rtnl.apply_lines(lines)
    except rtnl.RtnlError as e:
        raise LabError(f"configure {ns}: {e}") from None
    _write_sysctls(values)


def _write_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout or "").strip() or f"exit code {proc.returncode}"
        raise LabError(f"{what}: {msg}")


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    except OSError as e:
        raise LabError(f"{what}: cannot run {argv[0]}: {e}") from e
    _check(proc, what)


def _run_all(jobs: list[tuple[list[str], str, str]]) -> None:
    """Run (argv, stdin, what) jobs at the same time; raise the first failure."""
    procs = []
    try:
        for argv, stdin, what in jobs:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append((p, stdin, what))
    except OSError as e:
        for p, _, _ in procs:
            p.kill()
            p.wait()
        raise LabError(f"cannot run {jobs[len(procs)][0][0]}: {e}") from e
    errors = []
    for p, stdin, what in procs:
        out, err = p.communicate(stdin)
        if p.returncode != 0:
            errors.append(f"{what}: {(err or out).strip() or f'exit code {p.returncode}'}")
    if errors:
        raise LabError("; ".join(errors))


def _threads(works: list[tuple[str, Callable[[], Any]]]) -> None:
    """in_netns for several namespaces at once; raise the first failure."""
    errors: list[BaseException] = []

    def one(ns: str, work: Callable[[], Any]) -> None:
        try:
            in_netns(ns, work)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=w) for w in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        e = errors[0]
        raise e if isinstance(e, LabError) else LabError(str(e))


def netns_pids(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of `inodes` (scan of /proc, no process)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")  # "net:[4026532..]"
        except OSError:
            continue  # gone, or a zombie
        try:
            ino = int(link[link.index("[") + 1 : -1])
        except ValueError:
            continue
        if ino in inodes and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


class Lab:
    """One topology in namespaces. See the module docstring and the helper brief."""

    def __init__(
        self,
        topology: model.Topology,
        prefix: str,
        emit: Emit,
        label: str | None = None,
    ) -> None:
        try:
            self.plan: LabPlan = addressing.plan_lab(topology, prefix)
        except addressing.PlanError as e:
            raise LabError(str(e)) from e
        self.topology = topology
        self.prefix = prefix
        self.label = label
        self._emit = emit
        self.env: dict[str, str] = dict(self.plan.env)
        self._default = {d.name: d.default_via for d in self.plan.devices}
        self._cond: dict[tuple[str, str], model.LinkCondition | None] = {
            (d.name, i.name): i.impair for d in self.plan.devices for i in d.interfaces
        }
        self._qdisc: dict[tuple[str, str], bool | None] = {}  # ours there? None = unknown
        self._down: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.built = False
        self._owner = False  # made (some of) its namespaces: teardown never touches others'

    # ----- build / teardown -----

    def build(self) -> None:
        """Build the whole topology; on failure tear down what was made and raise LabError."""
        plan = self.plan
        existing = set(self._existing_namespaces())
        if existing:
            raise LabError(
                f"namespaces of prefix {self.prefix!r} already exist: {sorted(existing)}"
            )
        self._owner = True
        try:
            self._emit("lab_created", {"lab_prefix": self.prefix, "label": self.label})
            _run(
                ["ip", "-batch", "-"],
                "create namespaces and veths",
                _lines(netconfig.root_batch(plan)),
            )
            self._configure_namespaces()
            self.built = True
        except BaseException:
            self.teardown()
            raise
        self._emit(
            "ix_created",
            {
                "bridge": plan.ix_bridge,
                "cidr": plan.ix_cidr,
                "gw": plan.ix_gw,
                "cidr_v6": plan.ix_cidr_v6,
                "gw_v6": plan.ix_gw_v6,
            },
        )
        state = self.state()
        for r in plan.routers:
            # As the Rust runner: devices join their routers' lists as device_added arrives.
            self._emit("router_added", {"name": r.name, **state["routers"][r.name], "devices": []})
        for d in plan.devices:
            self._emit("device_added", {"name": d.name, **state["devices"][d.name]})

    def _configure_namespaces(self) -> None:
        """One thread per namespace, all at once: its `ip` lines over netlink, sysctls,
        then NAT rules and region delays (routers) or initial link conditions (devices)."""
        plan = self.plan
        batches = netconfig.namespace_batches(plan)
        sysctls = netconfig.sysctls(plan)
        if USE_IP:  # the same lines through `ip`, one process per namespace
            jobs = [
                (["ip", "-n", ns, "-batch", "-"], _lines(b), f"configure {ns}")
                for ns, b in batches.items()
            ]
            _run_all(jobs)
            batches = {}
        routers = {r.ns: r for r in plan.routers}
        devices = {d.ns: d for d in plan.devices}
        works: list[tuple[str, Callable[[], Any]]] = []
        for ns in plan.namespaces:
            lines, values = batches.get(ns, []), sysctls.get(ns, {})
            if ns in routers:
                work = functools.partial(self._configure_router, routers[ns], lines, values)
            elif ns in devices:
                work = functools.partial(self._configure_device, devices[ns], lines, values)
            else:
                work = functools.partial(_configure_plain, ns, lines, values)
            works.append((ns, work))
        _threads(works)

    def _configure_router(
        self, r: addressing.RouterPlan, lines: list[str], values: dict[str, str]
    ) -> None:
        _configure_plain(r.ns, lines, values)
        rules = netconfig.nat_ruleset(r)
        if rules:
            _run(["nft", "-f", "-"], f"nft in router {r.name}", rules)
            _write_sysctls(netconfig.conntrack_sysctls(r.nat))
        if r.upstream is None:
            try:
                tc = netconfig.region_tc_lines(self.plan, r.name)
            except ValueError as e:
                raise LabError(str(e)) from e
            if tc:
                _run(["tc", "-batch", "-"], f"region delays on router {r.name}", _lines(tc))

    def _configure_device(
        self, d: addressing.DevicePlan, lines: list[str], values: dict[str, str]
    ) -> None:
        _configure_plain(d.ns, lines, values)
        tc = []
        for i in d.interfaces:
            argvs = netconfig.link_condition_argv(i.name, i.impair, replace=False)
            if i.impair is not None and argvs:
                tc += netconfig.batch_lines(argvs)
                self._qdisc[(d.name, i.name)] = True
        if tc:
            _run(["tc", "-batch", "-"], f"tc in {d.name}", _lines(tc))

    def _existing_namespaces(self) -> list[str]:
        try:
            present = set(os.listdir(NETNS_DIR))
        except OSError:
            return []
        return [ns for ns in self.plan.namespaces if ns in present]

    def teardown(self) -> None:
        """Kill every process in the lab's namespaces, delete the namespaces (with their
        veths, qdiscs and nft rules). Idempotent; never raises."""
        try:
            namespaces = self._existing_namespaces() if self._owner else []
            if not namespaces:
                return
            inodes = set()
            for ns in namespaces:
                with contextlib.suppress(OSError):
                    inodes.add(_ns_inode(ns))
            deadline = time.monotonic() + 5
            while inodes and time.monotonic() < deadline:
                pids = netns_pids(inodes)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
            # Only names that are safe in a batch file (any other cannot be ours).
            safe = [ns for ns in namespaces if not _UNSAFE_BATCH_RE.search(ns)]
            subprocess.run(
                ["ip", "-force", "-batch", "-"],
                input=_lines(netconfig.delete_batch(safe)),
                capture_output=True,
                text=True,
            )
        except Exception:
            pass
        finally:
            self.built = False

    # ----- queries -----

    def _device(self, device: str) -> addressing.DevicePlan:
        try:
            return self.plan.device(device)
        except KeyError:
            raise LabError(f"no device {device!r} in the topology") from None

    def _iface(self, device: str, iface: str | None) -> addressing.IfacePlan:
        d = self._device(device)
        name = iface or self._default[device]
        try:
            return d.iface(name)
        except KeyError:
            names = [i.name for i in d.interfaces]
            raise LabError(f"device {device!r} has no interface {name!r} (has {names})") from None

    def ip_of(self, device: str, iface: str | None = None) -> str:
        i = self._iface(device, iface)
        ip = i.ip or i.ip_v6
        if ip is None:
            raise LabError(f"{device}.{i.name} has no address")
        return ip

    def ns_of(self, node: str) -> str:
        """Namespace of a device or a router."""
        for r in self.plan.routers:
            if r.name == node:
                return r.ns
        return self._device(node).ns

    def netns_argv(self, device: str) -> list[str]:
        """Prefix that runs an argv inside the device's (or router's) namespace."""
        return ["ip", "netns", "exec", self.ns_of(device)]

    def current_default(self, device: str) -> str:
        self._device(device)
        return self._default[device]

    # ----- changes -----

    def set_link_condition(
        self, device: str, iface: str | None, cond: model.LinkCondition | None
    ) -> None:
        """Put `cond` on the interface's egress (None clears). tc's errors become LabError."""
        i = self._iface(device, iface)
        with self._lock:
            self._apply_condition(device, i.name, cond)
            self._cond[(device, i.name)] = cond
        self._emit(
            "link_condition_changed",
            {"device": device, "iface": i.name, "condition": netconfig.condition_state(cond)},
        )

    def _apply_condition(self, device: str, iface: str, cond: model.LinkCondition | None) -> None:
        ns = self._device(device).ns
        key = (device, iface)
        ours = self._qdisc.get(key, False)
        if ours is None:  # unknown after a failure: clear whatever is there, quietly
            subprocess.run(
                ["tc", "-n", ns, "qdisc", "del", "dev", iface, "root"], capture_output=True
            )
            ours = False
        argvs = netconfig.link_condition_argv(iface, cond, replace=bool(ours))
        if not argvs:
            return
        try:
            _run(
                ["tc", "-n", ns, "-batch", "-"],
                f"tc on {device}.{iface}",
                _lines(netconfig.batch_lines(argvs)),
            )
        except LabError:
            self._qdisc[key] = None
            raise
        self._qdisc[key] = any(a[2] == "add" for a in argvs)

    def link_down(self, device: str, iface: str) -> None:
        i = self._iface(device, iface)
        _run(
            ["ip", "-n", self._device(device).ns, "link", "set", i.name, "down"],
            f"link-down {device}.{i.name}",
        )
        self._down.add((device, i.name))
        self._emit("link_down", {"device": device, "iface": i.name})

    def link_up(self, device: str, iface: str) -> None:
        """Bring the interface up; on the default interface, restore the default route."""
        i = self._iface(device, iface)
        lines = [f"link set {i.name} up"]
        if i.name == self._default[device]:
            lines += netconfig.default_route_lines(self.plan, device, i.name)
        _run(
            ["ip", "-n", self._device(device).ns, "-batch", "-"],
            f"link-up {device}.{i.name}",
            _lines(lines),
        )
        self._down.discard((device, i.name))
        self._emit("link_up", {"device": device, "iface": i.name})

    def set_default_route(self, device: str, iface: str) -> None:
        """Point the default route at `iface` and re-apply that interface's condition."""
        i = self._iface(device, iface)
        lines = netconfig.default_route_lines(self.plan, device, i.name)
        _run(
            ["ip", "-n", self._device(device).ns, "-batch", "-"],
            f"set-default-route {device} -> {i.name}",
            _lines(lines),
        )
        self._default[device] = i.name
        with self._lock:
            cond = self._cond.get((device, i.name))
            if cond is not None or self._qdisc.get((device, i.name)):
                self._apply_condition(device, i.name, cond)

    # ----- state.json -----

    def state(self) -> dict[str, Any]:
        plan = self.plan
        routers: dict[str, Any] = {}
        for r in plan.routers:
            routers[r.name] = {
                "ns": r.ns,
                "region": r.region,
                "nat": r.nat.value if r.nat else "none",
                "nat_v6": r.nat_v6 or "none",
                "firewall": "none",
                "ip_support": r.ip_support.value,
                "mtu": None,
                "upstream": r.upstream,
                "uplink_ip": r.uplink_ip,
                "uplink_ip_v6": r.uplink_ip_v6,
                "uplink_ll_v6": None,
                "downstream_cidr": r.downstream_cidr,
                "downstream_gw": r.downstream_gw,
                "downstream_cidr_v6": r.downstream_cidr_v6,
                "downstream_gw_v6": r.downstream_gw_v6,
                "downstream_ll_v6": None,
                "downstream_bridge": addressing.LAN_BRIDGE,
                "downlink_condition": None,
                "devices": list(r.devices),
                "counters": {},
            }
        devices: dict[str, Any] = {}
        for d in plan.devices:
            devices[d.name] = {
                "ns": d.ns,
                "default_via": self._default[d.name],
                "mtu": None,
                "interfaces": [
                    {
                        "name": i.name,
                        "router": i.router,
                        "ip": i.ip,
                        "ip_v6": i.ip_v6,
                        "ll_v6": None,
                        "link_condition": netconfig.condition_state(
                            self._cond.get((d.name, i.name))
                        ),
                        "up": (d.name, i.name) not in self._down,
                    }
                    for i in d.interfaces
                ],
                "counters": {},
            }
        regions: dict[str, Any] = {}
        for r in plan.routers:
            if r.region:
                entry = regions.setdefault(
                    r.region,
                    {
                        "router": r.name,
                        "routers": [],
                        "latencies": dict(plan.regions.get(r.region, {})),
                        "applied": True,
                    },
                )
                entry["routers"].append(r.name)
        return {
            "lab_prefix": self.prefix,
            "label": self.label,
            "ix": {
                "bridge": plan.ix_bridge,
                "cidr": plan.ix_cidr,
                "gw": plan.ix_gw,
                "cidr_v6": plan.ix_cidr_v6,
                "gw_v6": plan.ix_gw_v6,
            },
            "routers": routers,
            "devices": devices,
            "regions": regions,
            "region_links": [netconfig.region_link_state(link) for link in plan.region_links],
        }


# A batch file (`ip -batch`, `tc -batch`) is one command a line, run as root: a line
# with a line break (or another control character) in it would become more commands.
_UNSAFE_BATCH_RE = re.compile(r"[\x00-\x1f\x7f]")


def _lines(lines: list[str]) -> str:
    """The text of a batch file; LabError, and nothing written, when a line holds a
    newline or another control character. The reader refuses such names (simcore.limits);
    this is the second line of defence, for a topology that did not come through it."""
    for line in lines:
        if _UNSAFE_BATCH_RE.search(line):
            raise LabError(f"refused to write a batch line with a control character: {line!r}")
    return "".join(line + "\n" for line in lines)
