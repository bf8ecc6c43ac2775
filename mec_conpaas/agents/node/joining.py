"""The node agent's side of joining (manager/join.py is the manager's).

A join token ``<CA sha256>::<secret>`` pins the deployment CA: with an
``https://`` manager the agent first fetches the CA certificate (no secret
sent), refuses the manager when its SHA-256 is not the pinned one, and only
then sends the secret, over a connection verified against that CA.  The
answer is this node's own credential and its allocation, both kept in
``state_path`` (the join token is not needed again).
"""
import glob
import json
import logging
import os
import ssl
import urllib.parse

from mec_conpaas import digest
from mec_conpaas import exception
from mec_conpaas.agents.node import httpserver

LOG = logging.getLogger(__name__)
SEPARATOR = "::"
SERIAL_PATHS = ("/sys/firmware/devicetree/base/serial-number",
                "/proc/device-tree/serial-number")


class JoinRefused(exception.MecError):
    """The manager is not the one the token pins, or refused the token: a
    new token or a fix of the settings is needed, not a retry."""
    status = 401
    code = "join_refused"


def parse_token(token):
    """(CA hash or None, secret)."""
    token = (token or "").strip()
    if SEPARATOR not in token:
        return None, token
    pin, _, secret = token.partition(SEPARATOR)
    pin = pin.lower()
    if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin) or not secret:
        raise JoinRefused(
            "the join token must be <64 hex digits of the CA's SHA-256>::<secret>, "
            "as mec-conpaas-manage node-token create prints it: fix "
            "registration_token")
    return pin, secret


def first_mac():
    """The MAC of the first interface that is neither loopback nor a bridge:
    what identifies a node whose own bridge does not exist (the nova
    backend, where the bridge is neutron's). Two such nodes must not both
    fall back to the all-zero MAC: their node ids and identities would be
    the same, and each join would revoke the other's credential."""
    for path in sorted(glob.glob("/sys/class/net/*/address")):
        dev = os.path.dirname(path)
        if os.path.basename(dev) == "lo" or os.path.exists(os.path.join(dev, "bridge")):
            continue
        try:
            with open(path) as f:
                addr = f.read().strip()
        except OSError:
            continue
        if addr and addr != "00:00:00:00:00:00":
            return addr
    return "00:00:00:00:00:00"


def identity(configured, mac):
    """The node's stable identity: configured, the Pi's serial, or the MAC
    of its first physical interface (not the bridge's, which follows its
    ports)."""
    if configured:
        return configured
    for path in SERIAL_PATHS:
        try:
            with open(path, "rb") as f:
                serial = f.read().strip(b"\0\n ").decode()
            if serial:
                return "serial:" + serial
        except (OSError, UnicodeDecodeError):
            pass
    for dev in sorted(glob.glob("/sys/class/net/*/device")):
        try:
            with open(os.path.join(os.path.dirname(dev), "address")) as f:
                addr = f.read().strip()
            if addr and addr != "00:00:00:00:00:00":
                return "mac:" + addr
        except OSError:
            pass
    return "mac:" + mac


def cert_hash(pem):
    return digest.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def tls_context(ca_file):
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def fetch_pinned_ca(url, pin, ca_file):
    """The manager's CA certificate if its SHA-256 is ``pin`` (then written
    to ``ca_file``); JoinRefused otherwise.  Nothing secret is sent: the
    request carries no token."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # unverified until the pin is checked
    try:
        pem = httpserver.call("GET", url.rstrip("/") + "/v1/ca.pem", raw=True,
                              tls=ctx, timeout=30).decode()
        got = cert_hash(pem)
    except exception.NodeError as e:
        raise exception.NodeError("cannot fetch the manager's CA to check the join "
                                  "token's pin: %s" % e.message)
    except (ValueError, UnicodeDecodeError) as e:
        raise JoinRefused("the manager at %s sent no CA certificate (%s): it is not "
                          "a MEC-ConPaaS manager with TLS; refusing to send the "
                          "join token" % (url, e))
    if got != pin:
        raise JoinRefused(
            "refusing the manager at %s: its CA's SHA-256 is %s but the join token "
            "pins %s; nothing was sent. Check manager_url, or get a new token "
            "(mec-conpaas-manage node-token create on the master)" % (url, got, pin))
    tmp = ca_file + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(ca_file)), exist_ok=True)
    with open(tmp, "w") as f:
        f.write(pem)
    os.replace(tmp, ca_file)
    LOG.info("manager CA %s matches the join token's pin; kept in %s", got[:16],
             ca_file)
    return pem


def server_tls(conf):
    """The TLS context of this agent's own API, if the manager issued it a
    certificate at join (None: plain HTTP)."""
    cert, key = conf.join.agent_cert_file, conf.join.agent_key_file
    if not (os.path.exists(cert) and os.path.exists(key)):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def manager_tls(conf):
    """The TLS context for an https:// manager_url (None for http://); the
    CA must have been pinned or put in [join] manager_ca_file."""
    if urllib.parse.urlsplit(conf.node_agent.manager_url).scheme != "https":
        return None
    ca = conf.join.manager_ca_file
    if not os.path.exists(ca):
        raise JoinRefused(
            "manager_url is https:// but %s does not exist: use a join token "
            "<CA hash>::<secret> (it pins and keeps the CA) or copy the "
            "deployment CA there" % ca)
    return tls_context(ca)


def notify(conf, message):
    """Put why this node cannot join where its owner looks: the console and
    the login screen's issue file (``[join] notices``), not only the log."""
    text = "mec-conpaas-node-agent: NOT JOINED: %s\n" % message
    for path in conf.join.notices:
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError as e:
            LOG.warning("cannot write the join notice to %s: %s", path, e)


def clear_notice(conf, message):
    """Joined: the issue file's refusal goes, the console says so."""
    for path in conf.join.notices:
        try:
            if os.path.isfile(path):
                os.unlink(path)
            elif os.path.exists(path):
                with open(path, "w") as f:
                    f.write("mec-conpaas-node-agent: %s\n" % message)
        except OSError as e:
            LOG.warning("cannot clear the join notice in %s: %s", path, e)


def settings_warnings(conf):
    """What first boot found wrong in the card's settings file, for the
    registration (``[node_agent] settings_warnings_file``); None without a
    card.  A file it cannot read is itself reported: the owner looks at
    ``node show``, not at this node's log."""
    path = conf.node_agent.settings_warnings_file
    if not path:
        return None
    try:
        with open(path) as f:
            got = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        return ["first boot's warnings unreadable (%s: %s)" % (path, e)]
    if not isinstance(got, list):
        return ["first boot's warnings unreadable (%s: not a JSON list)" % path]
    return [str(w) for w in got]


def _write_private(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Membership:
    """This node's credential and allocation, as kept on disk."""

    def __init__(self, conf):
        self.conf = conf
        self.alloc_path = os.path.join(conf.state_path, "allocation.json")
        self.credential = self._read(conf.join.credential_file)
        self.allocation = None
        try:
            with open(self.alloc_path) as f:
                self.allocation = json.load(f)
        except (OSError, ValueError):
            pass

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def save_allocation(self, alloc):
        """Keep a new or changed allocation; True if it changed."""
        if alloc and alloc != self.allocation:
            self.allocation = alloc
            _write_private(self.alloc_path, json.dumps(alloc, indent=1, sort_keys=True))
            return True
        return False

    def forget_credential(self):
        self.credential = None
        try:
            os.unlink(self.conf.join.credential_file)
        except FileNotFoundError:
            pass

    def join(self, body):
        """Join with this node's own credential if it has one (a node
        joining again: the manager refuses a join token for a node that
        holds a credential), else with [node_agent] registration_token;
        returns the answer.  A plain token the manager does not know as a
        join token is taken as a deployment-wide node token (deployments
        from before join tokens)."""
        opts = self.conf.node_agent
        url = opts.manager_url.rstrip("/")
        # The credential this node asks for, kept until the answer is in: a
        # join repeated because its answer was lost proves with it that it
        # is the node the manager already let in (a new card has another).
        body = dict(body, credential=self._chosen())
        if self.credential:
            try:
                return self._joined(httpserver.call(
                    "POST", url + "/v1/nodes/join", self.credential, body,
                    tls=manager_tls(self.conf), timeout=30))
            except exception.NodeError as e:
                status = getattr(e, "remote_status", None)
                if status in (400, 403, 409):
                    raise JoinRefused("the manager refused to let this node join "
                                      "again: %s" % e.message)
                if status != 401:
                    raise
                LOG.warning("this node's credential was refused (%s): joining "
                            "with registration_token", e.message)
                self.forget_credential()
        pin, secret = parse_token(opts.registration_token)
        if not secret:
            raise JoinRefused("this node has no credential and no join token: set "
                              "registration_token (mec-conpaas-manage node-token "
                              "create prints one)")
        if pin and urllib.parse.urlsplit(url).scheme == "https":
            fetch_pinned_ca(url, pin, self.conf.join.manager_ca_file)
        elif pin:
            LOG.warning("manager_url %s is plain HTTP: the join token's CA pin "
                        "cannot be checked and the secret travels in clear", url)
        try:
            answer = httpserver.call("POST", url + "/v1/nodes/join", secret, body,
                                     tls=manager_tls(self.conf), timeout=30)
        except exception.NodeError as e:
            status = getattr(e, "remote_status", None)
            unknown = (status == 404 or getattr(e, "remote_code", None)
                       == "unknown_join_token")
            if unknown and pin is None:
                LOG.warning("registration_token is no join token here (%s): using "
                            "it as a deployment-wide node token", e.message)
                self.credential = secret
                return None
            if status in (400, 401, 403, 409):
                raise JoinRefused("the manager refused to let this node join: %s"
                                  % e.message)
            raise
        return self._joined(answer)

    def _chosen(self):
        path = self.conf.join.credential_file + ".pending"
        chosen = self._read(path)
        if not chosen:
            chosen = digest.token_urlsafe(32)
            _write_private(path, chosen)
        return chosen

    def _joined(self, answer):
        _write_private(self.conf.join.credential_file, answer["credential"])
        self.credential = answer["credential"]
        try:
            os.unlink(self.conf.join.credential_file + ".pending")
        except FileNotFoundError:
            pass
        cert = answer.get("agent_certificate")
        if cert:  # came over the pinned TLS connection, like the credential
            _write_private(self.conf.join.agent_key_file, cert["key"])
            _write_private(self.conf.join.agent_cert_file, cert["cert"])
        self.save_allocation(answer.get("allocation"))
        return answer
