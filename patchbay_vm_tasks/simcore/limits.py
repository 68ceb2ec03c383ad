"""What a sim may hold: the one name pattern, and the bounds of everything a sim can make
big. Sim files are untrusted input (SPEC 11): a shared topology or a file from elsewhere
must not reach a shell, an `ip -batch`/`nft -f`/`tc -batch` file or a file name with text
of its choosing, nor make the reader (host or guest) hang or run out of memory.

Names that become a namespace, interface, file or directory name, or a word in a batch
file (routers, devices, interfaces, regions, step ids, binaries, `[sim] name`) are
checked here, when the sim is read, against NAME_RE and a length. The Rust runner has no
such check (it sanitizes for paths and uses unnamed namespaces); its hard limit is the
kernel's: an interface name is at most 15 bytes. Our namespaces are files
`/run/netns/{prefix}-{name}` (prefix under 10 characters), far below NAME_MAX (255).

The bounds are generous for real sims: the corpus tops out at 3 routers, 11 devices
(`count = 10`), 21 steps, 2 interfaces per device, a 4 KB file, 6 levels of nesting.
"""

from __future__ import annotations

import re

from .model import SimError

# ── names ────────────────────────────────────────────────────────────────────────────
# ASCII letters and digits, then also '-' and '_'. No '.', since names are joined with
# dots into file names (`device.<dev>.<id>.stdout.log`) and capture keys (`<id>.<name>`),
# no '/', no whitespace or control characters, no shell or batch-file syntax, and no
# leading '-' (an option to ip/tc).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
NAME_RE = re.compile(NAME_PATTERN)
NAME_MAX_LEN = 63  # routers, devices (with their `-N` count suffix), regions, step ids, ...
IFACE_NAME_MAX_LEN = 15  # Linux: IFNAMSIZ (16) less the NUL
# The device namespace holds only the sim's interfaces and the loopback.
RESERVED_IFACE_NAMES = frozenset({"lo"})

# ── sizes ────────────────────────────────────────────────────────────────────────────
MAX_FILE_BYTES = 1 << 20  # one sim, topology or extends file
MAX_NESTING = 32  # tables and arrays inside each other, the document itself being 1
MAX_EXTENDS_DEPTH = 16  # [[extends]] inside [[extends]] ...
MAX_FILES_READ = 64  # files one sim reads: itself, extends (each time), binaries, topology
MAX_REF_CHARS = 1024  # a file name a sim gives ([[extends]] file, [sim] binaries)

MAX_ROUTERS = 256  # the address plan has 254 public and 255 NAT LANs
MAX_DEVICES = 1024  # after `count` is expanded
MAX_INTERFACES = 64  # per device
MAX_STEPS = 10_000  # after templates, groups and `count` are expanded
MAX_CHECKS = 10_000  # per assert step, after `count` is expanded
# Values (tables, arrays, scalars) that template and group expansion may copy in all:
# a big group used many times is refused instead of filling the memory.
MAX_EXPANDED_VALUES = 1_000_000
MAX_TEXT_CHARS = MAX_FILE_BYTES  # a string after `${group.x}` substitution

# ── numbers ──────────────────────────────────────────────────────────────────────────
MAX_DURATION_S = 7 * 24 * 3600  # a step's timeout, wait, ready_after; the runner's --timeout
MAX_DELAY_MS = 3_600_000  # latency and jitter of a link condition, region latencies
MAX_RATE_KBIT = 100_000_000  # 100 Gbit/s


def name_problem(value: object, max_len: int = NAME_MAX_LEN) -> str | None:
    """Why `value` is not a usable name, or None when it is."""
    if not isinstance(value, str):
        kind = {dict: "a table", list: "a list", bool: "a boolean"}.get(type(value))
        return f"must be a string, got {kind or type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > max_len:
        return f"is {len(value)} characters long; at most {max_len}"
    if not NAME_RE.fullmatch(value):
        return (
            "may hold only ASCII letters, digits, '-' and '_', and must start with a letter "
            "or a digit"
        )
    return None


def check_name(value: object, path: str, key: str, what: str, max_len: int = NAME_MAX_LEN) -> str:
    """`value` when it is a usable name (NAME_RE, at most `max_len`); else SimError."""
    why = name_problem(value, max_len)
    if why is not None:
        raise SimError(path, key, f"{what} {shorten(repr(value))} {why}")
    assert isinstance(value, str)
    return value


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut in the middle to at most about `limit` characters, for one-line messages."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}...{text[-(limit - keep - 3) :]}"
