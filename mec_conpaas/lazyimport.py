"""Deferred imports for the small daemons.

oslo.config imports stevedore when it is imported, only to load
configuration-source drivers (``[DEFAULT] config_source``), and stevedore
pulls in importlib.metadata, email and zipfile: about 9 MB of a node
agent's resident memory on a Pi, for a feature the agent does not use.
``defer()`` puts a placeholder module under that name whose first missing
attribute (``stevedore.ExtensionManager``) imports the real module and
hands over to it, so a configuration that does use config sources still
works.  (``importlib.util.LazyLoader`` cannot do this: the ``import``
statement itself reads the module's ``__spec__``, which loads it.)
"""
import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):

    def __getattr__(self, attr):
        # Only called for attributes the placeholder lacks.
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def defer(name):
    """Make ``import name`` cheap until the module is used (no-op if it is
    already imported or not installed)."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return
    sys.modules[name] = _Deferred(name, "placeholder until first use (lazyimport)")
