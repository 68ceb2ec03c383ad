"""The cloud-init NoCloud seed: render the YAML templates, write the `cidata` ISO.

Templates are plain YAML files in `cloud-init/` (the project's own folder wins
over the packaged copy) with `${name}` placeholders. Values are inserted as
YAML-quoted scalars, so a multi-line private key cannot break the document.
The ISO is built in-process with pycdlib: no seed HTTP server (SPEC 9.5), no
external ISO tool.
"""

from __future__ import annotations

import io
import json
import string
from collections.abc import Mapping
from pathlib import Path

import yaml

from .. import packagedata
from ..errors import UsageError
from ..files import atomic_file

SEED_FILES = ("user-data", "meta-data", "network-config")
SEED_MODE = 0o600
PACKAGED_TEMPLATES = packagedata.path(packagedata.CLOUD_INIT)


def template_dir(project_dir: Path) -> Path:
    """The project's `cloud-init/` folder when it has the templates, else the packaged one."""
    local = project_dir / "cloud-init"
    if all((local / f"{name}.yaml").is_file() for name in SEED_FILES):
        return local
    return PACKAGED_TEMPLATES


def render(template: str, values: Mapping[str, str | int], origin: str = "template") -> str:
    """Fill `${name}` placeholders with YAML-quoted values; check the result parses."""
    quoted = {k: json.dumps(v) if isinstance(v, str) else str(v) for k, v in values.items()}
    try:
        text = string.Template(template).substitute(quoted)
    except KeyError as e:
        raise UsageError(
            f"{origin}: unknown placeholder ${{{e.args[0]}}} (known: {', '.join(sorted(values))})"
        ) from None
    except ValueError as e:
        raise UsageError(f"{origin}: {e} (write $$ for a literal $)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"{origin}: the rendered file is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{origin}: the rendered file must be a YAML mapping")
    return text


def render_seed(templates: Path, values: Mapping[str, str | int]) -> dict[str, str]:
    """Render the three seed files from `templates`. Returns name -> text."""
    seed = {}
    for name in SEED_FILES:
        path = templates / f"{name}.yaml"
        seed[name] = render(path.read_text(), values, origin=str(path))
    if not seed["user-data"].lstrip().startswith("#cloud-config"):
        raise UsageError(f"{templates / 'user-data.yaml'}: must start with '#cloud-config'")
    return seed


def write_seed_iso(seed: Mapping[str, str], path: Path) -> None:
    """Write the NoCloud seed ISO (volume id `cidata`), atomically, mode 0600.

    It holds the guest's SSH host private key in clear: created 0600 (a temp file made
    exclusively, never through a link, renamed into place), in a state dir of mode 0700,
    so no other local user can read it and impersonate the guest to our pinned client.
    QEMU runs as the same user and reads it."""
    import pycdlib  # only when a seed is written or read, not at every task's start

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in seed.items():
        data = text.encode()
        iso_name = "/" + name.replace("-", "").upper()[:8] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    try:
        with atomic_file(path, SEED_MODE) as f:
            iso.write_fp(f)
    finally:
        iso.close()


def read_seed_iso(path: Path) -> dict[str, str]:
    """The files of a seed ISO by their Rock Ridge names (for tests and `status`)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode() if child.rock_ridge else ""
            if name in SEED_FILES:
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
                out[name] = buf.getvalue().decode()
        return out
    finally:
        iso.close()
