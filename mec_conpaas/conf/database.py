from oslo_config import cfg

database_group = cfg.OptGroup("database", title="State store")

database_opts = [
    cfg.StrOpt("connection",
               secret=True,
               help="""
SQLAlchemy URL of the manager's state store.

Possible values:
* unset: an SQLite file, ``$state_path/mec-conpaas.sqlite``.
* any SQLAlchemy URL, e.g. ``mysql+pymysql://user:pass@master/mec_conpaas``
  for MariaDB on the master.

Related options:
* ``[DEFAULT] state_path``
"""),
    cfg.BoolOpt("auto_migrate", default=True,
                help="""
Upgrade the schema to the newest alembic revision when the manager starts.

Disable it where upgrades are run explicitly with
``mec-conpaas-manage db sync``.
"""),
]


def register_opts(conf):
    conf.register_group(database_group)
    conf.register_opts(database_opts, group=database_group)


def list_opts():
    return {database_group: database_opts}
