"""The parsed, expanded form of a sim: what the reader produces and the runner consumes.

Everything here is plain data. Names, build order and defaults follow
RUNNER-FACTS.md; the reader (`reader.py`) fills these in after templates, groups,
`extends` and `count` are expanded, so the runner never sees a template.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any


class Nat(enum.Enum):
    """A router's IPv4 NAT mode (RUNNER-FACTS section 2). No NAT is `None`, not a member."""

    HOME = "home"
    CORPORATE = "corporate"
    CGNAT = "cgnat"
    CLOUD_NAT = "cloud-nat"
    FULL_CONE = "full-cone"


class IpSupport(enum.Enum):
    V4_ONLY = "v4-only"
    DUAL_STACK = "dual-stack"
    V6_ONLY = "v6-only"


class Action(enum.Enum):
    """Canonical step actions; the reader maps aliases (`set-impair`, `kind`) onto these."""

    RUN = "run"
    SPAWN = "spawn"
    WAIT_FOR = "wait-for"
    WAIT = "wait"
    SET_LINK_CONDITION = "set-link-condition"
    LINK_DOWN = "link-down"
    LINK_UP = "link-up"
    SET_DEFAULT_ROUTE = "set-default-route"
    GEN_CERTS = "gen-certs"
    GEN_FILE = "gen-file"
    ASSERT = "assert"


class Parser(enum.Enum):
    TEXT = "text"
    NDJSON = "ndjson"
    JSON = "json"


@dataclass(frozen=True)
class LinkCondition:
    """netem/tbf parameters of one interface, egress. `preset` names where it came from."""

    latency_ms: float = 0
    jitter_ms: float = 0
    loss_pct: float = 0
    rate_kbit: int = 0  # 0 = unlimited
    reorder_pct: float = 0
    duplicate_pct: float = 0
    corrupt_pct: float = 0
    preset: str | None = None


@dataclass(frozen=True)
class Router:
    name: str
    nat: Nat | None = None
    upstream: str | None = None
    region: str | None = None
    ip_support: IpSupport = IpSupport.V4_ONLY
    nat_v6: str | None = None


@dataclass(frozen=True)
class Interface:
    name: str
    gateway: str  # a router name
    impair: LinkCondition | None = None


@dataclass(frozen=True)
class Device:
    name: str  # counted devices are already expanded: "fetcher-0", "fetcher-1", ...
    interfaces: tuple[Interface, ...]  # sorted by name
    default_via: str  # an interface name


@dataclass(frozen=True)
class Topology:
    routers: tuple[Router, ...]  # as declared; build order is the planner's business
    devices: tuple[Device, ...]  # sorted by name, counts expanded in place
    # region -> {other region: one-way latency ms}, as written in [region.NAME] latencies
    regions: dict[str, dict[str, float]] = field(default_factory=dict)


class BinaryMode(enum.StrEnum):
    """How a binary is had (SIM-FORMAT "Binaries"): the one definition of the modes, for
    `[[binary]]` entries, the host's `--binary` and the builtin runner's `--binary`."""

    PATH = "path"  # a file (`target:` = in the cargo target dir, targetpaths.py)
    FETCH = "fetch"  # a URL: a binary or a .tar.gz
    BUILD = "build"  # a cargo project, built on the host
    TARGET = "target"  # `example`/`bin` already built in the cargo target dir


# What sim.run's `--binary NAME:MODE:VALUE` takes (`target` is a sim entry's mode only).
OVERRIDE_MODES = (BinaryMode.PATH, BinaryMode.FETCH, BinaryMode.BUILD)


@dataclass(frozen=True)
class Binary:
    """A `[[binary]]` entry; `mode` is inferred when the entry gives none."""

    name: str
    mode: BinaryMode
    path: str | None = None
    url: str | None = None
    repo: str | None = None
    commit: str | None = None
    example: str | None = None
    bin: str | None = None
    features: tuple[str, ...] = ()
    all_features: bool = False
    origin: str = field(default="", compare=False)  # the file that declared it


@dataclass(frozen=True)
class Capture:
    name: str
    pipe: str = "stdout"  # stdout | stderr
    regex: str | None = None
    match: dict[str, Any] | None = None
    pick: str | None = None


@dataclass
class Step:
    """One step after expansion. Only the fields of its action are meaningful.

    Strings may still hold `${...}` / `$NETSIM_IP_*` references: interpolation happens
    at run time. `timeout`, `ready_after` and `duration` are seconds.
    """

    index: int  # position in the expanded step list, from 0
    action: Action
    origin: str  # for messages: "sims/x.toml step 3 (use = transfer-provider)"
    id: str | None = None
    device: str | None = None
    cmd: list[str] = field(default_factory=list)  # template cmd + call-site args
    env: dict[str, str] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)  # "step_id.capture"
    timeout: float | None = None
    parser: Parser = Parser.TEXT
    captures: dict[str, Capture] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)  # field -> "step_id.capture"
    ready_after: float = 0.0  # spawn
    duration: float = 0.0  # wait
    interface: str | None = None  # set-link-condition, link-down/up
    condition: LinkCondition | None = None  # set-link-condition; None clears
    to: str | None = None  # set-default-route
    cn: str = "patchbay"  # gen-certs
    san: list[str] = field(default_factory=list)  # gen-certs
    content: str = ""  # gen-file
    checks: list[str] = field(default_factory=list)  # assert

    @property
    def key(self) -> str:
        """The capture namespace of the step: its id, else its device (RUNNER-FACTS 4)."""
        return self.id or self.device or f"step{self.index}"


@dataclass
class Sim:
    name: str
    path: str  # the sim file
    topology: Topology
    topology_ref: str | None  # the `[sim] topology` name, None when inline
    binaries: dict[str, Binary]
    prepare: list[dict[str, Any]]
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)  # unknown keys, in a run

    @property
    def topology_mode(self) -> str:
        """As the Rust runner writes it in sim.json: a `[sim] topology` file, or inline."""
        return "external" if self.topology_ref else "inline"


class SimError(Exception):
    """A sim that cannot be used. Names the file and, where known, the offending key.

    Always one line: control characters (a newline in a hostile name or key) are shown
    escaped, and very long parts are cut in the middle."""

    def __init__(self, path: str, key: str | None, message: str) -> None:
        self.path = _one_line(path, 300)
        self.key = None if key is None else _one_line(key, 300)
        self.message = _one_line(message, 2000)
        where = f"{self.path}: {self.key}" if self.key else self.path
        super().__init__(f"{where}: {self.message}")


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str, limit: int) -> str:
    text = _CONTROL_RE.sub(lambda m: repr(m[0])[1:-1], str(text))
    if len(text) > limit:
        keep = limit // 2
        text = f"{text[:keep]}...{text[-(limit - keep - 3) :]}"
    return text
