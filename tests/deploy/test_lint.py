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
