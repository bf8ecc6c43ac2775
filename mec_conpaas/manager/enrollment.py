"""OpenStack enrollment: the deployment's service credentials for nodes.

A flashed Pi image has nova-compute, neutron-linuxbridge-agent and
cinder-volume configured with placeholder passwords; at first boot the node
fetches the real ones from the manager (``GET /v1/nodes/enrollment``).
They come from ``[manager] openstack_enrollment_file``, read on each
request so that the admin can rotate them without restarting the manager.
"""
import json
import logging

from mec_conpaas import exception

LOG = logging.getLogger(__name__)

# Exactly what an edge node's OpenStack services need (nova.conf, neutron,
# cinder.conf): nothing else from the file is ever served.
PASSWORDS = ("rabbit", "nova", "placement", "neutron", "cinder", "cinder_db")
FORMAT = ('{"controller_host": HOST, "passwords": {%s}}'
          % ", ".join('"%s": TEXT' % k for k in PASSWORDS))


def _unavailable(path, problem):
    message = "OpenStack enrollment file %s %s; it must hold %s" % (path, problem, FORMAT)
    LOG.error("enrollment refused: %s", message)
    return exception.EnrollmentUnavailable(message)


def _text(value):
    return isinstance(value, str) and value.strip() != ""


def load(path):
    """The credentials a node gets, from the file at ``path``.

    Returns ``{"controller_host": ..., "passwords": {...}}`` with exactly
    the six passwords; raises EnrollmentNotConfigured when ``path`` is
    unset and EnrollmentUnavailable (logged) when the file cannot be used.
    """
    if not path:
        raise exception.EnrollmentNotConfigured(
            "this manager hands out no OpenStack credentials: deploy the node "
            "without OpenStack, or have the admin set [manager] "
            "openstack_enrollment_file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise _unavailable(path, "cannot be read (%s)" % (e.strerror or e))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _unavailable(path, "is not valid JSON (%s)" % e)
    if not isinstance(data, dict):
        raise _unavailable(path, "is not a JSON object")
    if not _text(data.get("controller_host")):
        raise _unavailable(path, "lacks controller_host (a non-empty string)")
    passwords = data.get("passwords")
    if not isinstance(passwords, dict):
        raise _unavailable(path, "lacks passwords (a JSON object)")
    bad = [k for k in PASSWORDS if not _text(passwords.get(k))]
    if bad:
        raise _unavailable(path, "lacks passwords.%s (each a non-empty string)"
                          % ", passwords.".join(bad))
    return {"controller_host": data["controller_host"],
            "passwords": {k: passwords[k] for k in PASSWORDS}}
