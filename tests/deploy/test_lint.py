"""yamllint, ansible-lint and --syntax-check of every playbook (no hosts needed)."""
import glob
import os
import subprocess

import pytest

from tests.deploy.conftest import REPO
from tests.deploy.conftest import ansible_env

PLAYBOOKS = sorted(glob.glob(os.path.join(REPO, "playbooks", "*.yml")))
LINT_PATHS = ["roles", "playbooks", "etc/inventory"]


def run(cmd):
    proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(), capture_output=True, text=True)
    assert proc.returncode == 0, "%s\n%s\n%s" % (" ".join(cmd), proc.stdout[-5000:],
                                                 proc.stderr[-5000:])
    return proc


def test_lint_yamllint():
    run(["yamllint", "--strict"] + LINT_PATHS)


def test_lint_ansible_lint():
    run(["ansible-lint", "--offline", "--strict"] + LINT_PATHS)


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=os.path.basename)
@pytest.mark.parametrize("inventory", ["example", "all-in-one"])
def test_lint_syntax_check(playbook, inventory):
    run(["ansible-playbook", "--syntax-check", "-i",
         os.path.join(REPO, "etc", "inventory", inventory, "hosts.yml"), playbook])


def test_lint_every_role_has_the_expected_layout():
    roles = sorted(d for d in os.listdir(os.path.join(REPO, "roles"))
                   if os.path.isdir(os.path.join(REPO, "roles", d)))
    expected = {"common", "edge_tuning", "wifi_ap", "openstack_controller", "nova_compute_lxc",
                "cinder_volume", "mec_conpaas_manager", "mec_conpaas_node"}
    assert expected <= set(roles)
    for role in expected | {"mec_conpaas_package"}:
        for path in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml",
                     "meta/argument_specs.yml", "README.md"):
            assert os.path.isfile(os.path.join(REPO, "roles", role, path)), (role, path)


CHOICE_PLAY = """
- name: The roles' driver and backend defaults, as a deployment gets them
  hosts: ap-1
  gather_facts: false
  tasks:
    - name: Load both roles' defaults
      ansible.builtin.include_vars:
        file: "{{ item }}"
      loop:
        - %(repo)s/roles/mec_conpaas_manager/defaults/main.yml
        - %(repo)s/roles/mec_conpaas_node/defaults/main.yml
    - name: Print them
      ansible.builtin.debug:
        msg: "CHOICE {{ mec_conpaas_manager_driver }}/{{ mec_conpaas_node_container_backend }}"
"""


@pytest.mark.parametrize("extra, expected", [
    ([], "openstack/nova"),
    (["-e", "mec_conpaas_use_openstack=false"], "lxc/libvirt"),
    (["--skip-tags", "openstack"], "lxc/libvirt"),
], ids=["default", "lxc-selected", "no-controller"])
def test_lint_openstack_is_the_default_where_there_is_a_controller(tmp_path, extra,
                                                                   expected):
    """The openstack driver (nova backend on the APs) is what a deployment with an
    OpenStack controller gets; mec_conpaas_use_openstack=false keeps the lxc driver,
    and so does a run that skips the openstack tag (no controller)."""
    play = tmp_path / "choice.yml"
    play.write_text(CHOICE_PLAY % {"repo": REPO})
    out = run(["ansible-playbook", "-i", os.path.join(REPO, "etc", "inventory", "example",
                                                      "hosts.yml"),
               "-c", "local", str(play)] + extra).stdout
    assert "CHOICE %s" % expected in out, out
