"""Small JSON-over-HTTP plumbing shared by the node agent and the edge.

The node agent uses the standard library's threaded HTTP server instead of
a framework: a framework alone would cost a third of the agent's memory
budget on a 1 GB Pi.
"""
import http.client
import http.server
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import urllib.parse

from mec_conpaas import exception

LOG = logging.getLogger(__name__)


class MethodNotAllowed(exception.MecError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, method, path, allowed):
        super().__init__("%s is not allowed on %s: use %s"
                         % (method, path, " or ".join(allowed)))
        self.headers = {"Allow": ", ".join(allowed)}


class Router:
    def __init__(self):
        self.routes = []

    def add(self, method, pattern, func):
        self.routes.append((method, re.compile("^" + pattern + "$"), func))

    def match(self, method, path):
        allowed = []
        for m, rx, func in self.routes:
            mo = rx.match(path)
            if mo:
                if m == method:
                    return func, mo.groupdict()
                allowed.append(m)
        if allowed:
            raise MethodNotAllowed(method, path, sorted(set(allowed)))
        raise exception.NotFound("no such resource: %s" % path)


class Response:
    def __init__(self, body, status=200, content_type="application/json"):
        self.body = body
        self.status = status
        self.content_type = content_type


def make_handler(router, authenticate):
    """Request handler: the caller is authenticated before anything else,
    so one without a valid token learns nothing (not even which paths
    exist); then unknown paths get 404 and known ones with another method
    405 with ``Allow``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60  # close kept-alive connections idle this long
        # Headers and body leave in separate writes: with Nagle on, the body
        # waits for the peer's delayed ACK (40 ms) on every kept-alive call.
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):
            LOG.debug("%s " + fmt, self.address_string(), *args)

        def _reply(self, status, body, content_type="application/json",
                   headers=None):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _read_body(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise exception.BadRequest(
                    "send the request body with a valid Content-Length")
            raw = self.rfile.read(length) if length else b""
            if raw and "json" in (self.headers.get("Content-Type") or "json"):
                try:
                    return json.loads(raw)
                except ValueError:
                    raise exception.BadRequest("request body is not JSON")
            return raw or None  # binary uploads (state tarballs)

        def _handle(self, method):
            try:
                try:
                    authenticate(self.headers.get("Authorization", ""))
                    func, params = router.match(method, self.path.split("?", 1)[0])
                except exception.MecError:
                    # The body stays unread: this connection cannot go on.
                    if self.headers.get("Content-Length", "0") != "0" or \
                            self.headers.get("Transfer-Encoding"):
                        self.close_connection = True
                    raise
                result = func(body=self._read_body(), **params)
                if isinstance(result, Response):
                    self._reply(result.status, result.body, result.content_type)
                else:
                    self._reply(200, result)
            except exception.MecError as e:
                headers = dict(getattr(e, "headers", None) or {})
                if e.status == 401:
                    headers["WWW-Authenticate"] = "Bearer"
                self._reply(e.status, {"error": {"code": e.code,
                                                 "message": e.message}},
                            headers=headers)
            except Exception as e:  # a bug, but the caller deserves JSON
                LOG.exception("request %s %s failed", method, self.path)
                self._reply(500, {"error": {"code": "internal_error",
                                            "message": str(e)}})

    for _method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                    "OPTIONS"):
        setattr(Handler, "do_" + _method,
                lambda self, m=_method: self._handle(m))
    return Handler


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    #: An ssl.SSLContext: HTTPS only.  The handshake is done in the
    #: request's own thread, so a slow or silent client holds no other.
    tls = None

    def finish_request(self, request, client_address):
        if self.tls is not None:
            request.settimeout(30)
            request = self.tls.wrap_socket(request, server_side=True)
            request.settimeout(None)
        super().finish_request(request, client_address)

    def server_bind(self):
        # Skip HTTPServer's getfqdn(): a reverse DNS lookup that stalls for
        # seconds on nodes whose resolver is unreachable.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.server_address[1]


#: Idle kept-alive connections, per peer, shared by every thread of the
#: process.  Per-thread pools (what this was) gave a fresh connection to
#: every call made from a request handler, since the threaded server runs
#: each request in a new thread: migration's final state push (a node agent
#: handling the manager's request) paid a TCP handshake over the backbone
#: inside the critical window.  A connection is owned by one caller between
#: ``_checkout`` and ``_checkin``.
_idle = {}
_idle_lock = threading.Lock()
#: Idle connections kept per peer: the manager's switch and a migration
#: need a few at once, more only cost the peer open sockets.
IDLE_PER_PEER = 4


class _NoDelayConnection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayTLSConnection(http.client.HTTPSConnection):
    #: The name the certificate must carry, when not the host connected to
    #: (a node agent's: its node id, whatever its address).
    server_name = None

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(
            self.sock, server_hostname=self.server_name or self.host)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _checkout(host, port, timeout, fresh=False, tls=None, server_name=None):
    key = (host, port, id(tls) if tls is not None else None, server_name)
    conn = None
    if not fresh:
        with _idle_lock:
            stack = _idle.get(key)
            if stack:
                conn = stack.pop()
    if conn is None:
        if tls is not None:
            conn = _NoDelayTLSConnection(host, port, timeout=timeout, context=tls)
            conn.server_name = server_name
        else:
            conn = _NoDelayConnection(host, port, timeout=timeout)
    conn.timeout = timeout
    if conn.sock is not None:
        conn.sock.settimeout(timeout)
    return key, conn


def _checkin(key, conn):
    with _idle_lock:
        stack = _idle.setdefault(key, [])
        if len(stack) < IDLE_PER_PEER:
            stack.append(conn)
            return
    conn.close()


def hang_up(url=None):
    """Close the kept-alive connections to ``url``'s host and port (all when
    None) that no call is using: for a caller that will not call again for
    long, as an idle connection costs the server (the manager's HTTP server
    walks every open connection on each turn of its loop)."""
    parts = urllib.parse.urlsplit(url) if url else None
    with _idle_lock:
        for key in list(_idle):
            if parts is None or (key[0], key[1]) == (
                    parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)):
                for conn in _idle.pop(key):
                    conn.close()


def call(method, url, token=None, body=None, timeout=30, raw=False,
         content_type="application/json", tls=None, server_name=None):
    """JSON request over a kept-alive connection (a process-wide pool per peer).

    Migration's critical window is a handful of these calls over shaped
    links: a new TCP handshake each time would double it.  Every node agent
    call is idempotent, so a request on a connection the peer closed while
    idle is retried once on a fresh one.  Raises NodeError carrying the
    remote message.  ``tls``: an ssl.SSLContext for an https:// URL (the
    manager's, pinned at join: agents/node/joining.py); ``server_name``: the
    name the server's certificate must carry, if not the URL's host.
    """
    parts = urllib.parse.urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None
    if isinstance(body, bytes):
        data = body
        headers["Content-Type"] = content_type
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    for attempt in (0, 1):
        if parts.scheme == "https" and tls is None:
            tls = ssl.create_default_context()
        key, conn = _checkout(parts.hostname, parts.port or (443 if tls else 80), timeout,
                              fresh=attempt == 1,
                              tls=tls if parts.scheme == "https" else None,
                              server_name=server_name)
        reused = conn.sock is not None
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError,
                BrokenPipeError, http.client.CannotSendRequest) as e:
            conn.close()
            if reused and attempt == 0:
                continue
            raise exception.NodeError("%s %s: %s" % (method, url, e)) from None
        except (OSError, http.client.HTTPException) as e:
            # HTTPException: e.g. IncompleteRead from a peer killed while
            # answering (a SIGKILLed manager); uncaught, it ended the node
            # agent's heartbeat thread and its node stayed down.
            conn.close()
            raise exception.NodeError("%s %s: %s" % (method, url, e)) from None
    if resp.will_close:
        conn.close()
    else:
        _checkin(key, conn)
    if resp.status >= 400:
        try:
            # Node agents and the manager answer {"error": {"message": ...}};
            # service agents {"error": "..."}, or their health's "detail".
            answer = json.loads(payload)
            msg = answer.get("error") or answer.get("detail")
            code = msg.get("code") if isinstance(msg, dict) else None
            msg = msg.get("message") if isinstance(msg, dict) else msg
        except Exception:
            msg = code = None
        msg = msg or resp.reason
        err = exception.NodeError("%s %s: %s" % (method, url, msg))
        err.remote_status = resp.status
        err.remote_code = code
        raise err
    return payload if raw else (json.loads(payload) if payload else None)
