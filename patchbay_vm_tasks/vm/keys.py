"""SSH keys of a VM: the client key we log in with and the guest's host key.

Both are generated on the host, so the host key can be pinned in our own
`known_hosts` and checked strictly (SPEC 9.6), instead of trusted on first use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..files import write_atomic
from .ports import LOOPBACK

# Private keys, and the seed ISO that holds the guest's host key: the user's alone.
PRIVATE_MODE = 0o600


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"

    @property
    def private_text(self) -> str:
        return self.private_path.read_text()


def ensure_keypair(path: Path, comment: str) -> KeyPair:
    """Load the ed25519 key at `path`, generating it (and `path`.pub) if absent."""
    # Loaded here: only a boot makes keys, and cryptography takes 0.03 s to import.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = path.with_name(path.name + ".pub")
    if not (path.exists() and pub.exists()):
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        # The private key through a temp file created exclusively with mode 0600 (never a
        # leftover of another mode, never through a link), then renamed into place: ssh
        # refuses keys that others can read, and nobody else may read them for a moment.
        write_atomic(path, private, PRIVATE_MODE)
        write_atomic(pub, f"{public.decode()} {comment}\n".encode(), 0o644)
    return KeyPair(path, pub.read_text().strip())


def write_known_hosts(path: Path, port: int, host_key: KeyPair) -> None:
    """Pin the guest host key for 127.0.0.1:port, the only way we reach the guest."""
    key_type, key_b64 = host_key.public_line.split()[:2]
    write_atomic(path, f"[{LOOPBACK}]:{port} {key_type} {key_b64}\n".encode(), 0o644)


def fingerprint(*parts: str) -> str:
    """A short stable digest of the given texts, used for the cloud-init instance id."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
