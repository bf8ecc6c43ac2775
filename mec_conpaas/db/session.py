"""Engine, sessions and schema upgrades for the manager's store."""
import contextlib
import os

import alembic.command
import alembic.config
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker

from mec_conpaas.conf import CONF

_engine = None
_Session = None

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


def database_url():
    url = CONF.database.connection
    if not url:
        os.makedirs(CONF.state_path, exist_ok=True)
        url = "sqlite:///" + os.path.join(CONF.state_path, "mec-conpaas.sqlite")
    return url


def _sqlite_pragmas(dbapi_conn, _record):
    # WAL lets the API read while an operation thread writes; the busy
    # timeout turns short lock waits into waits instead of errors.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL never corrupts the database; a power cut may lose
    # the last commits, which operation resume already tolerates.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def get_engine():
    global _engine, _Session
    if _engine is None:
        url = database_url()
        kwargs = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs["pool_pre_ping"] = True
        _engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(_engine, "connect", _sqlite_pragmas)
        _Session = sessionmaker(bind=_engine, expire_on_commit=False)
    return _engine


def reset():
    global _engine, _Session
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _Session = None


@contextlib.contextmanager
def session_scope():
    get_engine()
    session = _Session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config():
    cfg = alembic.config.Config(os.path.join(MIGRATIONS, "alembic.ini"))
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.attributes["engine"] = get_engine()
    return cfg


def upgrade(revision="head"):
    alembic.command.upgrade(alembic_config(), revision)


def current_revision():
    from alembic.runtime.migration import MigrationContext
    with get_engine().connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
