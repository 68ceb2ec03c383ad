"""cloud-init seed: rendering the editable templates, the ISO, keys and instance id."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import paramiko
import pytest
import yaml

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.vm import cloudinit, keys

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def values(tmp_path: Path) -> dict:
    client = keys.ensure_keypair(tmp_path / "id_ed25519", "client")
    host = keys.ensure_keypair(tmp_path / "host_key", "host")
    return {
        "user": "dev",
        "uid": 1000,
        "hostname": "patchbay-vm",
        "authorized_key": client.public_line,
        "host_private_key": host.private_text,
        "host_public_key": host.public_line,
        "instance_id": "iid-test",
    }


def test_templates_render_to_the_cloud_config_we_mean(values) -> None:
    seed = cloudinit.render_seed(REPO / "cloud-init", values)
    user = yaml.safe_load(seed["user-data"])
    assert seed["user-data"].startswith("#cloud-config")
    assert user["users"][0]["name"] == "dev" and user["users"][0]["uid"] == 1000
    assert user["users"][0]["ssh_authorized_keys"] == [values["authorized_key"]]
    # The multi-line private key survives as one YAML string, byte for byte.
    assert user["ssh_keys"]["ed25519_private"] == values["host_private_key"]
    assert user["ssh_genkeytypes"] == ["ed25519"]
    meta = yaml.safe_load(seed["meta-data"])
    assert meta == {"instance-id": "iid-test", "local-hostname": "patchbay-vm"}
    net = yaml.safe_load(seed["network-config"])
    # Matched by driver: NIC names differ between arches. The id is a name pattern
    # too, as cloud-init's networkd renderer matches on it (Name=) and not on `match`.
    ((name, nic),) = net["ethernets"].items()
    assert nic["match"] == {"driver": "virtio_net"}
    assert fnmatch.fnmatch("enp0s3", name) and fnmatch.fnmatch("enp0s1", name)


def test_project_templates_override_the_packaged_ones(tmp_path, values) -> None:
    assert cloudinit.template_dir(tmp_path) == cloudinit.PACKAGED_TEMPLATES
    local = tmp_path / "cloud-init"
    local.mkdir()
    for name in cloudinit.SEED_FILES:
        (local / f"{name}.yaml").write_text((REPO / "cloud-init" / f"{name}.yaml").read_text())
    assert cloudinit.template_dir(tmp_path) == local


def test_packaged_templates_are_the_repository_ones() -> None:
    for name in cloudinit.SEED_FILES:
        packaged = (cloudinit.PACKAGED_TEMPLATES / f"{name}.yaml").read_text()
        assert packaged == (REPO / "cloud-init" / f"{name}.yaml").read_text()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("#cloud-config\nx: ${nope}\n", "unknown placeholder ${nope}"),
        ("#cloud-config\nx: $ 1\n", "write $$ for a literal $"),
        ("#cloud-config\nx: [${user}\n", "the rendered file is not valid YAML"),
        ("#cloud-config\n- ${user}\n", "must be a YAML mapping"),
    ],
)
def test_bad_templates(template, message, values) -> None:
    with pytest.raises(UsageError) as e:
        cloudinit.render(template, values, origin="user-data.yaml")
    assert message in str(e.value) and "user-data.yaml" in str(e.value)


def test_dollar_escape() -> None:
    assert "cost: $5" in cloudinit.render("cost: $$5\n", {})


def test_iso_round_trip_with_cidata_label(tmp_path, values) -> None:
    import pycdlib

    seed = cloudinit.render_seed(REPO / "cloud-init", values)
    iso_path = tmp_path / "seed.iso"
    cloudinit.write_seed_iso(seed, iso_path)
    assert cloudinit.read_seed_iso(iso_path) == seed
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    assert iso.pvd.volume_identifier.decode().strip() == "cidata"
    iso.close()
    assert not list(tmp_path.glob("*.tmp"))


def test_keys_are_generated_once_and_usable(tmp_path) -> None:
    k1 = keys.ensure_keypair(tmp_path / "id", "c")
    k2 = keys.ensure_keypair(tmp_path / "id", "c")
    assert k1.public_line == k2.public_line and k1.public_line.startswith("ssh-ed25519 ")
    assert (tmp_path / "id").stat().st_mode & 0o777 == 0o600
    loaded = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "id"))
    assert loaded.get_base64() == k1.public_line.split()[1]


def test_known_hosts_pins_the_port(tmp_path) -> None:
    host = keys.ensure_keypair(tmp_path / "hk", "h")
    keys.write_known_hosts(tmp_path / "known_hosts", 2345, host)
    hk = paramiko.HostKeys(str(tmp_path / "known_hosts"))
    assert hk.lookup("[127.0.0.1]:2345")["ssh-ed25519"].get_base64() == host.public_line.split()[1]
    assert hk.lookup("[127.0.0.1]:2222") is None


def test_fingerprint_changes_with_any_part() -> None:
    assert keys.fingerprint("a", "b") == keys.fingerprint("a", "b")
    assert keys.fingerprint("a", "b") != keys.fingerprint("a", "c")
    assert keys.fingerprint("ab", "") != keys.fingerprint("a", "b")
