"""Keystone tenancy and the policy, against a REAL keystone.

keystone (from PyPI, in .venv-keystone: tools/install-deps.sh) runs on
127.0.0.1 from tools/keystone-local.py: sqlite, fernet tokens, bootstrapped.
Projects alpha and beta, a member of each (alice, bob), a reader of alpha
(carol), the bootstrap admin, and the manager's service user. The manager
(the real Flask app behind waitress, a recording engine: no containers)
runs with ``[api] auth_strategy = keystone``; people use the real CLI with
``--os-cloud``, node agents their PaaS node tokens.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import openstack
import pytest
import requests
import waitress
import yaml
from sqlalchemy import func
from sqlalchemy import select

from mec_conpaas import conf as conf_mod
from mec_conpaas.api import app as app_mod
from mec_conpaas.api import policy
from mec_conpaas.cli import client as client_mod
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import auth
from tests.unit.test_api_nodes import TOPO
from tests.unit.test_api_nodes import Manager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.environ.get("MEC_KEYSTONE_VENV", os.path.join(ROOT, ".venv-keystone"))
PASSWORD = "pw-%d" % os.getpid()
DOMAIN = {"user_domain_name": "Default", "project_domain_name": "Default"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Keystone:
    """tools/keystone-local.py as a child process."""

    def __init__(self, state, port):
        self.state, self.port, self.proc = state, port, None
        self.url = "http://127.0.0.1:%d/v3" % port

    def start(self):
        python = os.path.join(VENV, "bin", "python")
        if not os.path.exists(python):
            pytest.fail("no keystone virtualenv at %s: run tools/install-deps.sh" % VENV)
        self.log = open(os.path.join(self.state, "stdout.log"), "a")
        self.proc = subprocess.Popen(
            [python, os.path.join(ROOT, "tools", "keystone-local.py"), self.state,
             str(self.port), PASSWORD], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # a keystone that never answered is not left running
            raise

    def _wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "keystone died: see %s" % self.state
            try:
                if requests.get(self.url, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        pytest.fail("keystone did not answer on %s within 60 s" % self.url)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cloud(user, project):
    return {"auth": dict(DOMAIN, username=user, password=PASSWORD, project_name=project),
            "region_name": "RegionOne", "identity_api_version": 3}


class Bed:
    def __init__(self, root, keystone, manager_url, node_token):
        self.root, self.keystone, self.url = root, keystone, manager_url
        self.node_token = node_token
        self.clouds = os.path.join(root, "clouds.yaml")
        self.policy_file = os.path.join(root, "policy.yaml")
        self.bundles = os.path.join(root, "bundles")

    def cli(self, *args, cloud=None):
        """The real mec-conpaas, as a shell user of that cloud runs it."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OS_", "MEC_CONPAAS_"))}
        env["OS_CLIENT_CONFIG_FILE"] = self.clouds
        cmd = [os.path.join(os.path.dirname(sys.executable), "mec-conpaas"),
               "--url", self.url] + (["--os-cloud", cloud] if cloud else []) + list(args)
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    def cli_json(self, *args, cloud):
        res = self.cli(*args, "-f", "json", cloud=cloud)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def session(self, name):
        return openstack.config.OpenStackConfig(config_files=[self.clouds]).get_one(
            cloud=name).get_session()

    def heartbeat(self):
        for n in ("ap-1", "ap-2", "ap-3"):
            r = requests.post(self.url + "/v1/nodes/%s/heartbeat" % n, json={"report": {}},
                              headers={"Authorization": "Bearer " + self.node_token})
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    started = time.monotonic()
    root = str(tmp_path_factory.mktemp("keystone-bed"))
    os.makedirs(os.path.join(root, "keystone"))
    keystone = Keystone(os.path.join(root, "keystone"), free_port())
    keystone.start()
    print("keystone up in %.1f s" % (time.monotonic() - started))
    try:
        yield from _with_keystone(root, keystone, started)
    finally:
        keystone.stop()


def _with_keystone(root, keystone, started):
    admin = openstack.connect(auth_url=keystone.url, username="admin", password=PASSWORD,
                              project_name="admin", **DOMAIN)
    # By id, one request each: keystone answers in ~0.2 s here.
    projects = {p: admin.identity.create_project(name=p, domain_id="default")
                for p in ("alpha", "beta", "service")}
    roles = {r.name: r for r in admin.identity.roles()}
    for user, project, role in (("alice", "alpha", "member"), ("bob", "beta", "member"),
                                ("carol", "alpha", "reader"),
                                ("mec-conpaas", "service", "service")):
        u = admin.identity.create_user(name=user, password=PASSWORD, domain_id="default")
        admin.identity.assign_project_role_to_user(projects[project], u, roles[role])
    clouds = {"clouds": {"alice": cloud("alice", "alpha"), "bob": cloud("bob", "beta"),
                         "carol": cloud("carol", "alpha"), "admin": cloud("admin", "admin")}}
    for c in clouds["clouds"].values():
        c["auth"]["auth_url"] = keystone.url
    print("identity made in %.1f s" % (time.monotonic() - started))
    with open(os.path.join(root, "clouds.yaml"), "w") as f:
        yaml.safe_dump(clouds, f)
    with open(os.path.join(root, "policy.yaml"), "w") as f:
        f.write("# overrides of etc/mec-conpaas/policy.yaml.sample\n{}\n")
    with open(os.path.join(root, "topology.yaml"), "w") as f:
        f.write(TOPO)
    config = os.path.join(root, "mec-conpaas.conf")
    with open(config, "w") as f:
        f.write("""[DEFAULT]
state_path = {root}
[database]
connection = sqlite:///{root}/manager.sqlite
[manager]
topology_file = {root}/topology.yaml
[api]
auth_strategy = keystone
validate_responses = true
[oslo_policy]
policy_file = {root}/policy.yaml
[keystone_authtoken]
www_authenticate_uri = {url}
auth_url = {url}
auth_type = password
username = mec-conpaas
password = {pw}
project_name = service
user_domain_name = Default
project_domain_name = Default
service_token_roles_required = true
""".format(root=root, url=keystone.url, pw=PASSWORD))
    conf = conf_mod.parse_args(["--config-file", config])
    db.reset()
    policy.reset()
    db.upgrade()
    with db.session_scope() as s:
        node_token = auth.issue(s, "node", "node-agent")
    server = waitress.create_server(app_mod.create_app(Manager(conf)), host="127.0.0.1",
                                    port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    bed = Bed(root, keystone, "http://127.0.0.1:%d" % int(server.effective_port), node_token)
    for n in ("ap-1", "ap-2", "ap-3"):
        r = requests.post(bed.url + "/v1/nodes/register", json={
            "id": n, "name": n, "hostname": n, "mac": "02:00:00:00:00:01",
            "address": "10.0.0.1", "agent_port": 9681, "agent_token": "x",
            "max_instances": 3}, headers={"Authorization": "Bearer " + node_token})
        assert r.status_code == 200, r.text
    print("keystone bed ready in %.1f s" % (time.monotonic() - started))
    try:
        yield bed
    finally:
        server.close()
        for channel in list(server._map.values()):  # idle keep-alive ones
            channel.close()
        server.task_dispatcher.shutdown()
        thread.join(10)
        assert not thread.is_alive(), "the manager's server did not stop"
        # auth_token registered [keystone_authtoken] (auth_url required) on
        # the process's configuration: gone again for the next tests.
        conf.clear()
        for opt in list(conf["keystone_authtoken"]._group._opts.values()):
            conf.unregister_opt(opt["opt"], group="keystone_authtoken")
        conf_mod.parse_args([])
        db.reset()
        policy.reset()


def test_members_see_their_project_only_and_admin_sees_all(bed):
    bed.heartbeat()
    op = bed.cli_json("service", "create", "web", "shop", "--no-wait", cloud="alice")
    assert (op["kind"], op["service"], op["state"]) == ("create", "shop", "PENDING")
    assert bed.cli_json("service", "show", "shop", cloud="alice")["name"] == "shop"
    # The tenant is the keystone project, keyed by its id.
    alpha = bed.session("alice").get_project_id()
    with db.session_scope() as s:
        tenant = s.scalar(select(models.Tenant).where(models.Tenant.name == "alpha"))
        assert tenant.id == alpha
        assert s.scalar(select(models.Service.tenant_id)) == alpha
    # Another project's member: as if it did not exist.
    res = bed.cli("service", "show", "shop", cloud="bob")
    assert res.returncode == 1 and "no service named 'shop'" in res.stderr, res.stderr
    r = requests.get(bed.url + "/v1/services/shop",
                     headers={"X-Auth-Token": bed.session("bob").get_token()})
    assert r.status_code == 404
    assert bed.cli_json("service", "list", cloud="bob") == []
    bed.heartbeat()  # the CLI calls above take seconds each on a loaded machine
    bed.cli_json("service", "create", "web", "blog", "--no-wait", cloud="bob")
    # The keystone admin: every project's services with --all-tenants.
    every = bed.cli_json("service", "list", "--all-tenants", cloud="admin")
    assert sorted((s["name"], s["tenant"]) for s in every) == [("blog", "beta"),
                                                               ("shop", "alpha")]
    res = bed.cli("service", "list", "--all-tenants", cloud="alice")
    assert res.returncode == 1 and "services:list:all_tenants" in res.stderr


def test_keystone_roles_reach_the_policy(bed):
    # carol is a reader of alpha: she sees its services, changes nothing.
    assert [s["name"] for s in bed.cli_json("service", "list", cloud="carol")] == ["shop"]
    res = bed.cli("service", "delete", "shop", "--no-wait", cloud="carol")
    assert res.returncode == 1 and "policy does not allow services:delete" in res.stderr
    # A person's PaaS token is refused on a keystone manager; a node's is not.
    with db.session_scope() as s:
        tenant = auth.ensure_tenant(s, "local")
        paas = auth.issue(s, "admin", "root", tenant.id)
    r = requests.get(bed.url + "/v1/services", headers={"Authorization": "Bearer " + paas})
    assert r.status_code == 401 and "--os-cloud" in r.json()["error"]["message"]
    r = requests.get(bed.url + "/v1/services", headers={"X-Auth-Token": "not-a-token"})
    assert r.status_code == 401 and "keystone did not accept" in r.json()["error"]["message"]
    r = requests.post(bed.url + "/v1/nodes/ap-1/drain",
                      headers={"X-Auth-Token": bed.session("alice").get_token()})
    assert r.status_code == 404  # node endpoints stay hidden from tenants


def test_a_policy_file_changes_an_answer(bed):
    with db.session_scope() as s:  # as if the engine had created it
        svc = s.scalar(select(models.Service).where(models.Service.name == "shop"))
        svc.state, svc.operation_id = "RUNNING", None
        s.add(models.Instance(service_id=svc.id, node_name=svc.home_node,
                              state="ACTIVE", address="10.250.0.2"))
    target = "ap-2" if svc.home_node != "ap-2" else "ap-3"
    bed.heartbeat()
    op = bed.cli_json("service", "migrate", "shop", "--to", target, "--no-wait",
                      cloud="alice")
    assert (op["kind"], op["state"]) == ("migrate", "PENDING")
    with open(bed.policy_file, "w") as f:
        yaml.safe_dump({"services:migrate": "rule:context_is_admin"}, f)
    # Checked before anything else: a forbidden caller learns nothing of state.
    res = bed.cli("service", "migrate", "shop", "--to", target, "--no-wait",
                  cloud="alice")
    assert res.returncode == 1, res.stdout
    assert "policy does not allow services:migrate" in res.stderr, res.stderr
    with open(bed.policy_file, "w") as f:
        f.write("{}\n")
    res = bed.cli("service", "migrate", "shop", "--to", target, "--no-wait",
                  cloud="alice")
    # Allowed again: now the answer is about the service (its migration runs).
    assert res.returncode == 1, res.stdout
    assert "service shop is busy with operation %s (migrate" % op["id"] in res.stderr


def test_dashboard_sign_in_trades_credentials_for_a_token(bed):
    """POST /dashboard/keystone-login (the page's sign-in; the browser test
    drives it through the page): keystone's token for the project, which
    the API then accepts; keystone's refusal as 401; off-schema as 400."""
    url = bed.url + "/dashboard/keystone-login"
    assert requests.get(bed.url + "/dashboard/login-methods").json() == {
        "methods": ["keystone"]}
    r = requests.post(url, json={"username": "alice", "password": PASSWORD,
                                 "project": "alpha", "domain": "Default"})
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    got = r.json()
    assert (got["user"], got["project"]) == ("alice", "alpha") and got["expires_at"]
    listed = requests.get(bed.url + "/v1/services", headers={"X-Auth-Token": got["token"]})
    assert listed.status_code == 200 and "services" in listed.json()
    r = requests.post(url, json={"username": "alice", "password": "wrong", "project": "alpha"})
    assert r.status_code == 401 and "keystone refused" in r.json()["error"]["message"]
    assert "wrong" not in r.text
    r = requests.post(url, json={"username": "alice", "password": PASSWORD,
                                 "project": "beta"})  # not her project
    assert r.status_code == 401, r.text
    r = requests.post(url, json={"username": "alice", "project": "alpha"})
    assert r.status_code == 400 and "password" in r.json()["error"]["message"]


def test_keystone_down_is_a_clear_error_and_changes_nothing(bed):
    def counts():
        with db.session_scope() as s:
            return [s.scalar(select(func.count()).select_from(m))
                    for m in (models.Tenant, models.Service, models.Operation)]
    # A token the manager has not validated yet (it caches those it has).
    token = bed.session("bob").get_token()
    before, bundles = counts(), sorted(os.listdir(bed.bundles))
    bed.keystone.stop()
    bed.heartbeat()  # node agents do not need keystone
    started = time.monotonic()
    r = requests.post(bed.url + "/v1/services", data={"type": "web", "name": "more"},
                      headers={"X-Auth-Token": token})
    took = time.monotonic() - started
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "keystone_unavailable"
    assert "keystone (%s) is unreachable" % bed.keystone.url in error["message"]
    assert "nothing was changed" in error["message"]
    assert (counts(), sorted(os.listdir(bed.bundles))) == (before, bundles)
    res = bed.cli("service", "list", cloud="alice")
    assert res.returncode == 1 and "cannot reach keystone" in res.stderr, res.stderr
    print("503 after %.1f s" % took)
    r = requests.post(bed.url + "/dashboard/keystone-login", json={
        "username": "alice", "password": PASSWORD, "project": "alpha"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "keystone_unavailable"


def test_which_credentials_the_cli_sends(monkeypatch, tmp_path):
    """The command line, then MEC_CONPAAS_TOKEN, then OS_* (no keystone
    needed: a session asks for its token only when used)."""
    for key in list(os.environ):
        if key.startswith(("OS_", "MEC_CONPAAS_")):
            monkeypatch.delenv(key)
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    for key, value in (("AUTH_URL", "http://127.0.0.1:9/v3"), ("USERNAME", "alice"),
                       ("PASSWORD", "x"), ("PROJECT_NAME", "alpha"),
                       ("USER_DOMAIN_NAME", "Default"), ("PROJECT_DOMAIN_NAME", "Default")):
        monkeypatch.setenv("OS_" + key, value)
    assert client_mod.keystone_for().auth.auth_url == "http://127.0.0.1:9/v3"
    assert client_mod.keystone_for(token="paas") is None
    monkeypatch.setenv("MEC_CONPAAS_TOKEN", "paas")
    assert client_mod.keystone_for() is None
    with pytest.raises(client_mod.ApiError, match="cloud 'nope'"):
        client_mod.keystone_for(cloud="nope")
