"""Tenants are keystone projects on the deployed cluster (issue 9): with the openstack
driver the manager runs [api] auth_strategy = keystone, and users of two projects, each a
plain keystone ``member``, use the PaaS with their keystone credentials (``mec-conpaas
--os-cloud``) and see only their own project's services."""
import json
import secrets

import pytest

from tests.deploy.conftest import KEYSTONE_AUTH
from tests.deploy.conftest import PAAS_CLI
from tests.deploy.conftest import full_only

CLOUDS = "/var/tmp/mec-test-tenants-clouds.yaml"
PROJECTS = ("mec-test-p1", "mec-test-p2")


@pytest.fixture(scope="module")
def tenants(master):
    """Two keystone projects with one member user each, and a clouds.yaml naming them;
    removed afterwards (their services first)."""
    if master.run(KEYSTONE_AUTH, check=False).returncode != 0:
        pytest.skip("the manager runs auth_strategy = token (the lxc driver): keystone "
                    "tenancy comes with the openstack driver")
    auth_url = master.run("OS_CLOUD=mec-admin openstack endpoint list --service identity "
                          "--interface public -f value -c URL").stdout.split()[0]
    clouds = {}
    for project in PROJECTS:
        user, password = project + "-user", secrets.token_urlsafe(16)
        master.openstack("project create --or-show --domain Default %s" % project)
        master.openstack("user create --or-show --domain Default %s" % user)
        # "--password=": a token may begin with "-", which argparse would read as an option
        master.openstack("user set --password=%s %s" % (password, user))
        master.openstack("role add --user %s --project %s member" % (user, project))
        clouds[project] = {"auth": {
            "auth_url": auth_url, "username": user, "password": password,
            "project_name": project, "user_domain_name": "Default",
            "project_domain_name": "Default"}, "identity_api_version": 3}
    master.run("umask 077; cat > %s <<'EOF_'\n%s\nEOF_" % (
        CLOUDS, json.dumps({"clouds": clouds}, indent=1)))
    yield {p: "OS_CLIENT_CONFIG_FILE=%s MEC_CONPAAS_URL=http://127.0.0.1:9680 "
              "/opt/mec-conpaas/venv/bin/mec-conpaas --os-cloud %s " % (CLOUDS, p)
           for p in PROJECTS}
    for project in PROJECTS:
        master.run("OS_CLOUD=mec-admin openstack user delete %s-user" % project, check=False)
        master.run("OS_CLOUD=mec-admin openstack project delete %s" % project, check=False)
    master.run("rm -f %s" % CLOUDS)


def names(master, cli, *args):
    return sorted(s["name"] for s in json.loads(
        master.run(cli + "service list -f json " + " ".join(args)).stdout))


@full_only
def test_users_of_two_keystone_projects_see_only_their_own_services(master, aps, tenants):
    one, two = (tenants[p] for p in PROJECTS)
    created = []
    try:
        for cli, name, ap in ((one, "ten-a", aps[0]), (two, "ten-b", aps[0])):
            master.run(cli + "service create web %s --node %s -f json" % (name, ap.name),
                       timeout=600)
            created.append((cli, name))
        assert names(master, one) == ["ten-a"]
        assert names(master, two) == ["ten-b"]
        # Another project's service does not exist for you, whatever you try on it.
        for verb in ("show", "delete"):
            out = master.run(two + "service %s ten-a" % verb, check=False, timeout=300)
            assert out.returncode != 0, out.stdout
            assert "no service named 'ten-a'" in out.stderr + out.stdout, out.stderr
        assert names(master, one) == ["ten-a"], "project 2's delete reached project 1's"
        # A member is not the PaaS admin: every project's services stay the admin's view.
        out = master.run(one + "service list --all-tenants -f json", check=False)
        assert out.returncode != 0, out.stdout
        every = {s["name"]: s["tenant"] for s in json.loads(
            master.run(PAAS_CLI + "service list --all-tenants -f json").stdout)}
        assert every.get("ten-a") == PROJECTS[0] and every.get("ten-b") == PROJECTS[1], every
    finally:
        for cli, name in created:
            master.run(cli + "service delete %s" % name, check=False, timeout=300)
