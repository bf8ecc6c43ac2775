"""The node agent's resident memory kept to what it uses (issue 13: <= 30
MB on a Pi; ``bench/footprint.py`` measures it).

glibc, not Python, decides when freed memory goes back to the kernel: a
freed block in the middle of its heap stays resident until the heap's top
is free too.  Python frees much of what it allocates while starting (each
module's ``.pyc`` is read whole, then unmarshalled and dropped) and while
serving (request bodies, bundles, state batches), so the agent hands those
pages back itself, at start and after each heartbeat (well under a
millisecond for its heap).
"""
import ctypes
import importlib
import importlib.util
import sys
import threading
import types

# glibc's mallopt(M_ARENA_MAX).
M_ARENA_MAX = -8



def _glibc():
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # musl has neither


_LIBC = _glibc()


def few_malloc_arenas(arenas=2):
    """Let glibc keep at most ``arenas`` malloc arenas.  By default each
    thread that allocates may get one of its own (up to 8 per core), and
    the agent starts a thread per request it serves: their arenas' pages
    stay resident.  What MALLOC_ARENA_MAX does, set from here so that every
    way of starting the agent (systemd unit, image, embedded edge) has it."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, arenas)


def trim():
    """Return every free page of every arena to the kernel."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until something uses it: the
    first attribute asked of it imports the real module, which takes its
    place there (the stand-in then forwards to it)."""

    _lock = threading.Lock()

    def __getattr__(self, attr):
        with self._lock:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
        return getattr(real, attr)


#: What the agent's entry point defers (cmd/node_agent.py), and why:
#: oslo.config imports stevedore at its start for configuration source
#: drivers (entry points, ``[DEFAULT] config_source``), which an agent's
#: configuration does not use: 0.7 MB resident with the importlib.metadata
#: and zipfile it brings; http.client imports ssl at its own import, used
#: only with TLS (an https:// manager, an agent API with a certificate from
#: the join): 1 MB; tarfile serves state copies and
#: bundles only (bench/footprint.py measures each).  Deferred, not removed:
#: what uses them still loads them.
AGENT_DEFERRED = ("stevedore", "ssl", "tarfile")


def defer_agent_imports():
    for name in AGENT_DEFERRED:
        defer_import(name)


def defer_import(name):
    """Let ``import name`` succeed without loading ``name`` until it is
    used (Python 3.11's LazyLoader loads at the import statement itself).
    Nothing if it is loaded already or not installed."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is not None:
        stand_in = _Deferred(name)
        stand_in.__spec__ = spec
        sys.modules[name] = stand_in
