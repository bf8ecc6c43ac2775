"""The deployment CA and the manager's certificate, and what pins them.

Like kubeadm and K3s: the CA is the deployment's own, made once on the
master (``mec-conpaas-manage ca create``); it signs the manager's serving
certificate only.  A join token starts with the SHA-256 of the CA
certificate (DER), so a node with nothing but the token can check, before
it sends any secret, that it talks to this deployment's manager.
"""
import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID

LOG = logging.getLogger(__name__)
CA_DAYS = 3650
CERT_DAYS = 825


def _write(path, data, mode):
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MEC-ConPaaS"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def pem_hash(pem):
    """SHA-256 (hex) of a PEM certificate's DER: what a join token pins."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def ca_hash(ca_file):
    with open(ca_file, "rb") as f:
        return pem_hash(f.read())


def ensure_ca(ca_file, ca_key_file):
    """The deployment CA, made if missing; returns True if it was made."""
    if os.path.exists(ca_file) and os.path.exists(ca_key_file):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("MEC-ConPaaS deployment CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=True, crl_sign=True, encipher_only=False,
                decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(ca_key_file, _key_pem(key), 0o600)
    _write(ca_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def _san(names):
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _issue(ca_file, ca_key_file, names):
    """(certificate chain PEM, key PEM) for ``names``, signed by the CA."""
    with open(ca_file, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(ca_key_file, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    names = list(dict.fromkeys(n for n in names if n))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    # The chain: nodes that pinned the CA verify the leaf against it.
    return (cert.public_bytes(serialization.Encoding.PEM)
            + ca.public_bytes(serialization.Encoding.PEM)), _key_pem(key)


def issue_server_cert(ca_file, ca_key_file, cert_file, key_file, names):
    """A serving certificate for ``names`` (host names and addresses) signed
    by the deployment CA."""
    chain, key = _issue(ca_file, ca_key_file, names)
    _write(key_file, key, 0o600)
    _write(cert_file, chain, 0o644)


def agent_server_name(node_id):
    """The name a node agent's certificate is issued for, and the one the
    manager and the other node agents check: the node's id, so that it stays
    right when the node's address changes (DHCP) and no node can pass for
    another with its own certificate."""
    return "%s.node.mec-conpaas" % node_id


def issue_agent_cert(conf, node_id):
    """{"cert", "key"} (PEM) for a joining node's agent API, or None when this
    manager has no CA to sign with (plain HTTP: a key must not travel in
    clear)."""
    if not conf.tls.cert_file or not os.path.exists(conf.tls.ca_key_file):
        return None
    chain, key = _issue(conf.tls.ca_file, conf.tls.ca_key_file,
                        [agent_server_name(node_id)])
    return {"cert": chain.decode(), "key": key.decode()}


def default_names(conf):
    """Names the manager's certificate covers unless told: its host name,
    its bind address and loopback."""
    names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"]
    if conf.api.bind_host not in ("0.0.0.0", "::"):
        names.insert(0, conf.api.bind_host)
    return names


def server(conf, app):
    """The manager's HTTPS server (cheroot: waitress has no TLS), not yet
    started; TLS 1.2 at least."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    opts = conf.api
    for path, what in ((conf.tls.cert_file, "cert_file"), (conf.tls.key_file, "key_file")):
        if not path or not os.path.exists(path):
            raise FileNotFoundError(
                "[tls] %s %s does not exist: run mec-conpaas-manage ca create "
                "(or unset [tls] cert_file for plain HTTP)" % (what, path))
    srv = wsgi.Server((opts.bind_host, opts.bind_port), app,
                      numthreads=opts.threads, server_name="mec-conpaas")
    adapter = BuiltinSSLAdapter(conf.tls.cert_file, conf.tls.key_file)
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    srv.ssl_adapter = adapter
    return srv


def serve(conf, app):
    srv = server(conf, app)
    LOG.info("manager API on https://%s:%s (CA %s)", conf.api.bind_host,
             conf.api.bind_port, ca_hash(conf.tls.ca_file)[:16])
    srv.safe_start()
