"""Cloud drivers, found by name under the ``mec_conpaas.drivers`` entry
point (setup.cfg): a driver shipped elsewhere registers itself there and
is chosen with ``[manager] driver``; nothing outside this package knows
which one runs."""
import importlib.metadata

from mec_conpaas import exception

ENTRY_POINT = "mec_conpaas.drivers"


def installed():
    """``{name: entry point}`` of the registered drivers."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT)}


def load(name, conf=None):
    """The driver registered as ``name``, made with ``conf``."""
    found = installed()
    if name not in found:
        raise exception.MecError(
            "unknown cloud driver %r in [manager] driver: the installed ones "
            "are %s (registered under the %s entry point)" % (
                name, ", ".join(sorted(found)) or "none", ENTRY_POINT))
    try:
        cls = found[name].load()
    except (ImportError, AttributeError) as e:
        raise exception.MecError("cloud driver %r (%s) cannot be loaded: %s" % (
            name, found[name].value, e)) from e
    return cls(conf)
