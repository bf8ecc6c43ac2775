"""The boot-partition settings file parser of roles/first_boot, run as the real
script (`mec-conpaas-firstboot check FILE`) on this machine: no image needed."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "roles", "first_boot", "files", "mec-conpaas-firstboot")
EXAMPLE = os.path.join(REPO, "roles", "first_boot", "templates", "mec-conpaas.txt.example.j2")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq2bXhJ0v8tKpm6ZAbcdefghijklmnopqrstuvwxyz01 me@laptop"
GOOD = {
    "hostname": "ap-1", "wifi_ssid": "MEC-ConPaaS", "wifi_passphrase": "correct horse",
    "wifi_country": "NL", "master": "192.0.2.10", "registration_token": "tok-123",
    "ssh_authorized_key": KEY,
}


def check(tmp_path, text, encoding="utf-8"):
    f = tmp_path / "mec-conpaas.txt"
    f.write_bytes(text.encode(encoding))
    res = subprocess.run([sys.executable, SCRIPT, "check", str(f)], capture_output=True, text=True)
    return res.returncode, (json.loads(res.stdout) if res.returncode == 0 else None), res.stderr


def firstboot():
    """The first-boot script as a module (it has no .py name)."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("mec_conpaas_firstboot", SCRIPT)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def render(d, eol="\n"):
    return eol.join(f"{k} = {v}" for k, v in d.items()) + eol


def test_valid_file_parsed(tmp_path):
    rc, cfg, err = check(tmp_path, render(GOOD))
    assert rc == 0, err
    assert cfg["hostname"] == "ap-1" and cfg["backbone"] == "dhcp"
    assert cfg["ssh_authorized_key"] == KEY
    assert "wifi_passphrase" not in cfg, "check must not echo the passphrase"


def test_windows_editor_file(tmp_path):
    """CRLF line endings, a BOM, quotes and lower-case country: accepted."""
    d = dict(GOOD, wifi_passphrase='"with spaces inside"', wifi_country="fr")
    rc, cfg, err = check(tmp_path, "\ufeff# comment\r\n" + render(d, "\r\n"))
    assert rc == 0, err
    assert cfg["wifi_country"] == "FR"


def test_static_backbone(tmp_path):
    d = dict(GOOD, backbone="192.0.2.21/24", backbone_gateway="192.0.2.1",
             backbone_dns="192.0.2.1, 2001:db8::53")
    rc, cfg, err = check(tmp_path, render(d))
    assert rc == 0, err
    assert cfg["backbone"] == "192.0.2.21/24"


def test_example_shipped_in_the_image_is_valid(tmp_path):
    text = open(EXAMPLE).read()
    for var, val in (("first_boot_config_file | basename", "mec-conpaas.txt"),
                     ("first_boot_manager_port", "9680"), ("first_boot_admin_user", "mec"),
                     ("first_boot_backbone_interface", "eth0")):
        text = text.replace("{{ " + var + " }}", val)
    assert "{{" not in text
    rc, cfg, err = check(tmp_path, text)
    assert rc == 0, err


@pytest.mark.parametrize("key", ["hostname", "wifi_ssid", "wifi_passphrase", "wifi_country",
                                 "master", "registration_token"])
def test_required_setting_missing(tmp_path, key):
    d = {k: v for k, v in GOOD.items() if k != key}
    rc, _, err = check(tmp_path, render(d))
    assert rc == 1
    assert f"{key} is missing" in err


@pytest.mark.parametrize("key,value,message", [
    ("hostname", "ap_1", "hostname"),
    ("hostname", "-ap", "hostname"),
    ("wifi_ssid", "x" * 33, "wifi_ssid"),
    ("wifi_passphrase", "short", "wifi_passphrase"),
    ("wifi_passphrase", "ünïcødé-passphrase", "wifi_passphrase"),
    ("wifi_country", "Netherlands", "wifi_country"),
    ("master", "10.0.0.1:99999", "master"),
    ("master", "ftp://10.0.0.1", "master"),
    ("registration_token", "two words", "registration_token"),
    ("ssh_authorized_key", "not a key", "ssh_authorized_key"),
    ("backbone", "192.0.2.300/24", "backbone"),
    ("backbone", "192.0.2.21", "backbone"),
])
def test_malformed_value(tmp_path, key, value, message):
    rc, _, err = check(tmp_path, render(dict(GOOD, **{key: value})))
    assert rc == 1
    assert f": {message}" in err, err


def test_typos_and_duplicates_are_errors(tmp_path):
    text = render(GOOD) + "wifi_pasphrase = x\nhostname = ap-2\njust some words\n"
    rc, _, err = check(tmp_path, text)
    assert rc == 1
    assert "unknown setting 'wifi_pasphrase'" in err
    assert "hostname is set twice" in err
    assert "expected KEY = VALUE" in err


def test_unknown_key_is_a_warning(tmp_path):
    """Not close to any known key: ignored, and said so (first boot goes on;
    tests/unit/test_settings_warnings.py follows it to node show)."""
    rc, cfg, err = check(tmp_path, render(GOOD) + "colour = blue\n")
    assert rc == 0 and "colour" not in cfg
    assert f"warning: line {len(GOOD) + 1}: unknown setting 'colour' ignored" in err, err
    rc, _, err = check(tmp_path, render(dict(GOOD, hostname="AP-1", backbone="192.0.2.21/24")))
    assert rc == 0
    assert "hostname 'AP-1' used as 'ap-1'" in err
    assert "without backbone_gateway" in err


def test_gateway_without_static_address(tmp_path):
    rc, _, err = check(tmp_path, render(dict(GOOD, backbone_gateway="192.0.2.1")))
    assert rc == 1 and "only used with a static backbone" in err


def test_not_utf8(tmp_path):
    rc, _, err = check(tmp_path, render(dict(GOOD, wifi_ssid="caf\xe9")), encoding="latin-1")
    assert rc == 1 and "cannot read" in err and "Traceback" not in err


def test_secrets_removed_from_the_card_after_first_boot(tmp_path):
    """After a successful apply, the passphrase and the token are commented out of the
    FAT file (CRLF and the rest kept); a re-run then fails on the missing keys instead
    of applying the placeholder text."""
    mod = firstboot()
    f = tmp_path / "mec-conpaas.txt"
    text = "\ufeff" + render(GOOD, eol="\r\n")
    f.write_bytes(text.encode())
    mod.redact_secrets(mod.DEFAULT_SETTINGS, str(f), text)
    new = f.read_bytes().decode()
    assert "correct horse" not in new and "tok-123" not in new
    assert "# wifi_passphrase = (removed by first boot" in new
    assert "# registration_token = (removed by first boot" in new
    assert f"ssh_authorized_key = {KEY}\r\n" in new and "hostname = ap-1\r\n" in new
    assert new.count("\r\n") == len(GOOD)
    rc, _, err = check(tmp_path, new)
    assert rc == 1 and "wifi_passphrase is missing" in err and "registration_token" in err


def test_node_agent_follows_the_images_hostapd(tmp_path):
    """First boot points [node_agent] hostapd_ctrl_interface at the control socket of
    the hostapd that roles/wifi_ap configures (its ctrl_interface directory and
    interface), so the agent sees AP-STA-CONNECTED/DISCONNECTED; no hostapd
    configuration, or one without a control interface: nothing to follow."""
    import jinja2
    import yaml
    role = os.path.join(REPO, "roles", "wifi_ap")
    with open(os.path.join(role, "defaults", "main.yml")) as f:
        defaults = yaml.safe_load(f)
    with open(os.path.join(role, "templates", "hostapd.conf.j2")) as f:
        text = jinja2.Template(f.read()).render(
            defaults, ansible_managed="test", wifi_ap_ssid="s", wifi_ap_passphrase="p" * 8,
            wifi_ap_country_code="NL")
    conf = tmp_path / "hostapd.conf"
    conf.write_text(text)
    mod = firstboot()
    ctrl_dir = re.search(r"^ctrl_interface=(\S+)$", text, re.M).group(1)
    assert mod.hostapd_ctrl_socket(str(conf)) == os.path.join(
        ctrl_dir, defaults["wifi_ap_interface"])
    conf.write_text(text.replace("ctrl_interface=", "ctrl_interface=DIR=", 1)
                    .replace(f"={ctrl_dir}\n", f"={ctrl_dir} GROUP=netdev\n", 1))
    assert mod.hostapd_ctrl_socket(str(conf)) == os.path.join(
        ctrl_dir, defaults["wifi_ap_interface"])
    conf.write_text(re.sub(r"^ctrl_interface.*\n", "", text, flags=re.M))
    assert mod.hostapd_ctrl_socket(str(conf)) is None
    assert mod.hostapd_ctrl_socket(str(tmp_path / "absent.conf")) is None
