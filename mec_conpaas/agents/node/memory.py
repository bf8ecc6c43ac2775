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
