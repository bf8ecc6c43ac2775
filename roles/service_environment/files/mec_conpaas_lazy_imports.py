# Managed by roles/service_environment (MEC-ConPaaS); edits are overwritten.
"""Deferred imports for the OpenStack services of an edge node.

Imported at every Python start on the node by ``mec-conpaas-lazy-imports.pth``;
does nothing unless ``MEC_CONPAAS_LAZY_IMPORTS`` names modules (comma-separated),
as the services' systemd drop-ins do, and sudo keeps for the privsep daemons they
start (roles/service_environment).  A named module is then created empty when
imported, and its code runs at the first use of one of its attributes
(importlib.util.LazyLoader): the same code, run later or never.

Why: neutron_lib/__init__.py imports ``neutron_lib.db.api`` for neutron-server's
sake (oslo.db, SQLAlchemy, pecan, osprofiler), and every neutron privsep daemon
and the linuxbridge agent import neutron_lib for its constants: about 30 MB per
process for a database layer they never use.  The variable only ever defers code
that would have run; it cannot add any.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

VARIABLE = "MEC_CONPAAS_LAZY_IMPORTS"


class LazyFinder(importlib.abc.MetaPathFinder):
    """Finds the named modules with the other finders and defers their code."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        # Python source only: an extension module's loader does its work when
        # the module is created, which LazyLoader cannot defer.
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def install(value):
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if names and not any(isinstance(f, LazyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LazyFinder(names))


install(os.environ.get(VARIABLE))
