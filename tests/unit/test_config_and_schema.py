"""The sample config and the alembic migrations stay in sync with code."""
import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from mec_conpaas import conf as conf_mod
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


def test_migrations_match_models(tmp_path):
    conf = conf_mod.parse_args([])
    conf.set_override("connection", "sqlite:///%s/t.sqlite" % tmp_path, group="database")
    try:
        db.reset()
        db.upgrade()
        assert db.current_revision() == "0001"
        with db.get_engine().connect() as c:
            diff = compare_metadata(MigrationContext.configure(c), models.Base.metadata)
        assert diff == []
    finally:
        db.reset()
        conf.clear_override("connection", group="database")
