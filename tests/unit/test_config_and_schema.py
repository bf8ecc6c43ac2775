"""The sample config and the alembic migrations stay in sync with code."""
import os
import subprocess
import sys

import alembic.command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy import text

from mec_conpaas.db import models
from mec_conpaas.db import session as db

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_sample_config_is_current(tmp_path):
    out = tmp_path / "sample.conf"
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "oslo-config-generator"),
                    "--namespace", "mec_conpaas", "--wrap-width", "79",
                    "--output-file", str(out)], check=True)
    committed = open(os.path.join(ROOT, "etc", "mec-conpaas",
                                  "mec-conpaas.conf.sample")).read()
    assert out.read_text() == committed, \
        "regenerate it: tox -e genconfig"


def test_migrations_match_models(conf):
    db.upgrade()
    assert db.current_revision() == "0010_full_settings_warnings"
    with db.get_engine().connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), models.Base.metadata)
    assert diff == []


def test_upgrade_keeps_the_rows_of_an_existing_store(conf):
    """0001 -> head on a store in use: nodes become schedulable, nothing is
    lost."""
    db.upgrade("0001")
    now = models.utcnow()
    with db.get_engine().begin() as c:
        c.execute(text(
            "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'alice', :now)"),
            {"now": now})
        for name in ("ap-1", "ap-2"):
            c.execute(text(
                "INSERT INTO nodes (id, name, hostname, mac, address, agent_port, "
                "agent_token, container_backend, max_instances, state, report, "
                "registered_at, last_heartbeat) VALUES (:n, :n, :n, "
                "'02:00:00:00:00:01', '10.0.0.1', 9681, 'x', 'libvirt', 3, 'up', "
                "'{}', :now, :now)"), {"n": name, "now": now})
        c.execute(text(
            "INSERT INTO services (id, tenant_id, name, type, state, home_node, port, "
            "bundle_sha256, memory_mb, cpus, created_at, updated_at) VALUES ('s1', "
            "'t1', 'shop', 'web', 'RUNNING', 'ap-1', 20000, 'f00', 64, 0.5, :now, "
            ":now)"), {"now": now})
        c.execute(text(
            "INSERT INTO instances (id, service_id, node_name, role, state, "
            "created_at) VALUES ('i1', 's1', 'ap-1', 'worker', 'ACTIVE', :now)"),
            {"now": now})
        # An operation still unfinished comes to hold its service.
        for op_id, state in (("o1", "SUCCEEDED"), ("o2", "RUNNING")):
            c.execute(text(
                "INSERT INTO operations (id, tenant_id, service_id, service_name, "
                "kind, state, progress, step, params, journal, attempts, created_at, "
                "updated_at) VALUES (:id, 't1', 's1', 'shop', 'scale', :state, 0, "
                "'', '{}', '{}', 1, :now, :now)"), {"id": op_id, "state": state,
                                                   "now": now})
    db.upgrade()
    assert db.current_revision() == "0010_full_settings_warnings"
    with db.session_scope() as s:
        nodes = s.scalars(select(models.Node).order_by(models.Node.name)).all()
        assert [(n.name, n.disabled, n.disabled_reason) for n in nodes] == [
            ("ap-1", False, None), ("ap-2", False, None)]
        svc = s.get(models.Service, "s1")
        assert (svc.name, svc.home_node, [i.id for i in svc.instances]) == (
            "shop", "ap-1", ["i1"])
        assert svc.operation_id == "o2"
        # 0005: an existing service gets the QoS spec's defaults.
        from mec_conpaas.policies import qos
        assert qos.of(svc) == qos.QoS()
        nodes[0].disabled = True
    with db.session_scope() as s:
        assert s.get(models.Node, "ap-1").disabled is True
    alembic.command.downgrade(db.alembic_config(), "0001")
    with db.get_engine().connect() as c:
        rows = c.execute(text("SELECT * FROM nodes ORDER BY name")).mappings().all()
    assert [r["name"] for r in rows] == ["ap-1", "ap-2"]
    assert "disabled" not in rows[0]


def test_package_data_ships_every_non_python_file():
    """Deployed nodes and the master install a built wheel, not the checkout:
    a data file the programs read but setup.cfg's package_data misses is
    absent there (the OpenAPI document was, and the manager never started
    on the deploy test bed)."""
    import configparser
    import fnmatch
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    patterns = cfg["options.package_data"]["mec_conpaas"].split()
    tracked = subprocess.run(["git", "ls-files", "mec_conpaas"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    data = [f[len("mec_conpaas/"):] for f in tracked if not f.endswith(".py")]
    assert data, "git ls-files found nothing: run the tests from a checkout"
    missing = [f for f in data if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not missing, "add to [options.package_data] in setup.cfg: %s" % missing
