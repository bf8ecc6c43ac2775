"""The policy's defaults and its generated sample file."""
import os
import subprocess
import sys

from mec_conpaas.api import policy
from mec_conpaas.manager import auth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

# What each PaaS token role could do before rules were policies (the role
# lists api/app.py checked): the defaults must keep exactly that.
BEFORE = {
    "node": {"nodes:register", "nodes:heartbeat", "nodes:enrollment", "bundles:get",
             "nodes:list", "nodes:show", "nodes:show:all_instances"},
    "member": {"nodes:list", "nodes:show", "services:create", "services:list",
               "services:show", "services:logs", "services:delete", "services:scale",
               "services:migrate", "services:stop", "services:start",
               "operations:list", "operations:show"},
}
BEFORE["admin"] = {r.name for r in policy.api_rules}


def test_defaults_keep_what_each_paas_role_could_do(conf):
    policy.reset()
    for role, allowed in BEFORE.items():
        ctx = auth.Context(role=role, user="u", tenant_id="t")
        got = {r.name for r in policy.api_rules
               if policy.check(conf, r.name, ctx.creds(), {"project_id": "t"})}
        assert got == allowed, role


def test_keystone_roles_are_taken_as_they_are(conf):
    """A keystone reader reads; the configured admin role is ``admin``."""
    policy.reset()
    reader = auth.Context(role="member", user="carol", tenant_id="p", roles=("reader",))
    assert policy.check(conf, "services:show", reader.creds(), {"project_id": "p"})
    assert not policy.check(conf, "services:create", reader.creds(), {"project_id": "p"})
    boss = auth.Context(role="admin", user="root", tenant_id="p", roles=("cloud-admin",))
    assert policy.check(conf, "nodes:drain", boss.creds(), {"project_id": "p"})


def test_sample_policy_is_current(tmp_path):
    out = tmp_path / "policy.yaml"
    subprocess.run([os.path.join(os.path.dirname(sys.executable),
                                 "oslopolicy-sample-generator"),
                    "--namespace", "mec_conpaas", "--output-file", str(out)], check=True)
    committed = open(os.path.join(ROOT, "etc", "mec-conpaas", "policy.yaml.sample")).read()
    assert out.read_text() == committed, "regenerate it: tox -e genpolicy"
