"""First boot's OpenStack enrollment (`mec-conpaas-firstboot enroll`), run as the
real script on this machine against the real manager (mec-conpaas-manager from
this checkout): no image needed.  The emulated boot of a full image checks the
same on a booted node (tests/image/test_emulated_boot.py)."""

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml
from imagelib import ENROLLMENT
from imagelib import REPO
from imagelib import free_port

SCRIPT = os.path.join(REPO, "roles", "first_boot", "files", "mec-conpaas-firstboot")
with open(os.path.join(REPO, "image-builder", "image-vars.yml")) as _f:
    PLACEHOLDERS = yaml.safe_load(_f)["mec_conpaas_openstack_passwords"]
# As roles/nova_compute_lxc and roles/cinder_volume render them with image-vars.yml.
NOVA = ("[DEFAULT]\ntransport_url = rabbit://openstack:{rabbit}@mec-master.invalid:5672/\n"
        "[keystone_authtoken]\npassword = {nova}\n[placement]\npassword = {placement}\n"
        "[neutron]\npassword = {neutron}\n")
CINDER = "[database]\nconnection = mysql+pymysql://cinder:{cinder_db}@mec-master.invalid/cinder\n"


@pytest.fixture(scope="module")
def manager(managers):
    return managers("enroll-master")


@pytest.fixture(scope="module")
def bare_manager(managers):
    """A master without OpenStack: no enrollment file configured."""
    return managers("enroll-bare", enrollment=None)


def node(tmp_path, url, token):
    """A node's files after first boot applied its settings file."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "firstboot.done").write_text("applied\n")
    conf = tmp_path / "mec-conpaas.conf"
    conf.write_text(f"[node_agent]\nmanager_url = {url}\nregistration_token = {token}\n")
    nova, cinder = tmp_path / "nova.conf", tmp_path / "cinder.conf"
    nova.write_text(NOVA.format(**PLACEHOLDERS))
    cinder.write_text(CINDER.format(**PLACEHOLDERS))
    nova.chmod(0o640)
    settings = tmp_path / "firstboot.json"
    settings.write_text(json.dumps({
        "state_dir": str(state), "node_agent_config": str(conf),
        "placeholder_files": [str(nova), str(cinder), str(tmp_path / "absent.conf")],
        "password_placeholders": PLACEHOLDERS,
        "openstack_units": ["mec-conpaas-test-absent.service"], "enroll_retry_max_s": 5}))
    return settings, state, nova, cinder


def enroll(settings, timeout=60):
    env = dict(os.environ, MEC_CONPAAS_FIRSTBOOT_SETTINGS=str(settings))
    try:
        res = subprocess.run([sys.executable, SCRIPT, "enroll"], env=env, capture_output=True,
                             text=True, timeout=timeout)
        return res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        return None, (e.stdout or b"").decode() + (e.stderr or b"").decode()


def test_enroll_sets_passwords_from_the_master(tmp_path, manager):
    settings, state, nova, cinder = node(tmp_path, manager.url, manager.node_token)
    rc, out = enroll(settings)
    assert rc == 0, out
    pw = ENROLLMENT["passwords"]
    assert nova.read_text() == NOVA.format(**pw)
    assert cinder.read_text() == CINDER.format(**pw)
    assert stat.S_IMODE(nova.stat().st_mode) == 0o640, "nova.conf lost its mode"
    assert (state / "openstack.enrolled").exists()
    assert "OpenStack service passwords set" in out
    # A second run (a later boot) does nothing.
    rc, out = enroll(settings)
    assert rc == 0 and "already enrolled" in out


def test_wrong_token_changes_nothing_and_says_what_to_fix(tmp_path, manager):
    settings, state, nova, cinder = node(tmp_path, manager.url, "not-the-token")
    before = nova.read_text()
    rc, out = enroll(settings)
    assert rc == 2, out  # permanent: systemd does not restart it (RestartPreventExitStatus)
    assert "refused the registration token" in out and "registration_token" in out
    assert nova.read_text() == before
    assert not (state / "openstack.enrolled").exists()


def test_master_without_openstack_leaves_openstack_off(tmp_path, bare_manager):
    settings, state, nova, _ = node(tmp_path, bare_manager.url, bare_manager.node_token)
    before = nova.read_text()
    rc, out = enroll(settings)
    assert rc == 0, out
    assert "no OpenStack enrollment configured" in out
    assert nova.read_text() == before and not (state / "openstack.enrolled").exists()


def test_unreachable_master_is_retried(tmp_path):
    settings, state, nova, _ = node(tmp_path, f"http://127.0.0.1:{free_port()}", "t")
    before = nova.read_text()
    rc, out = enroll(settings, timeout=12)
    assert rc is None, f"enroll gave up on an unreachable master: {out}"
    assert out.count("retrying in") >= 2, out
    assert nova.read_text() == before and not (state / "openstack.enrolled").exists()


def test_broken_enrollment_file_on_the_master_is_retried(tmp_path, manager):
    """The admin's enrollment file vanished: the node waits for it, changing nothing."""
    settings, state, nova, _ = node(tmp_path, manager.url, manager.node_token)
    os.rename(manager.enrollment_file, manager.enrollment_file + ".away")
    try:
        rc, out = enroll(settings, timeout=12)
    finally:
        os.rename(manager.enrollment_file + ".away", manager.enrollment_file)
    assert rc is None, out
    assert "503" in out and "retrying in" in out, out
    assert not (state / "openstack.enrolled").exists()
    rc, out = enroll(settings)
    assert rc == 0 and (state / "openstack.enrolled").exists(), out
