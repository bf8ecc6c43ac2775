"""REST client of the manager, shared by the CLI, the benchmarks and tests."""
import os
import time

import requests
import yaml
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

CREDENTIALS = os.path.expanduser("~/.config/mec-conpaas/credentials.yaml")


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def keystone_for(token=None, cloud=None):
    """The keystone session to send tokens of, or None for a PaaS token.

    The command line wins (--token, then --os-cloud); then the PaaS's own
    MEC_CONPAAS_TOKEN; then keystone credentials as the openstack CLI finds
    them (OS_CLOUD's clouds.yaml entry, or an openrc's OS_* variables);
    else the credentials file's PaaS token."""
    if token:
        return None
    if cloud:
        return keystone_session(cloud)
    if os.environ.get("MEC_CONPAAS_TOKEN"):
        return None
    if os.environ.get("OS_CLOUD") or os.environ.get("OS_AUTH_URL"):
        return keystone_session()
    return None


def keystone_session(cloud=None):
    """A keystoneauth session from clouds.yaml / OS_* (openstacksdk's
    loader, the one the openstack CLI uses); it fetches and renews the
    token itself."""
    from openstack import config as os_config
    from openstack import exceptions as os_exc
    try:
        return os_config.OpenStackConfig().get_one(cloud=cloud).get_session()
    except (os_exc.ConfigException, KeyError) as e:
        raise ApiError(0, "cannot load keystone credentials%s: %s (check "
                          "clouds.yaml or your OS_* variables)" % (
                              " of cloud %r" % cloud if cloud else "", e)) from None


class Client:

    def __init__(self, url=None, token=None, timeout=60, keystone=None, ca_cert=None):
        """``keystone``: a keystoneauth session whose token is sent
        (X-Auth-Token) instead of a PaaS token; ``ca_cert``: the deployment
        CA an https:// manager's certificate is checked against (else the
        credentials file's ``ca_cert``, else the system's CAs)."""
        self.keystone = keystone
        creds = {}
        if not (url and (token or keystone)) and os.path.exists(CREDENTIALS):
            with open(CREDENTIALS) as f:
                creds = yaml.safe_load(f) or {}
        self.url = (url or os.environ.get("MEC_CONPAAS_URL") or creds.get("url")
                    or "http://127.0.0.1:9680").rstrip("/")
        self.token = None if keystone else (
            token or os.environ.get("MEC_CONPAAS_TOKEN") or creds.get("token"))
        self.timeout = timeout
        self.session = requests.Session()
        # Per request: a session's verify loses to REQUESTS_CA_BUNDLE.
        self.ca_cert = (ca_cert or os.environ.get("MEC_CONPAAS_CA_CERT")
                        or creds.get("ca_cert"))
        # A restarted manager resets pooled connections: reads are safe to
        # retry, mutations are not (they would create a second operation).
        retry = Retry(total=4, connect=4, read=2, status=0, backoff_factor=0.25,
                      allowed_methods=frozenset({"GET", "HEAD"}))
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def request(self, method, path, **kwargs):
        headers = kwargs.pop("headers", {})
        if self.keystone:
            headers["X-Auth-Token"] = self._keystone_token()
        elif self.token:
            headers["Authorization"] = "Bearer " + self.token
        if self.ca_cert:
            kwargs.setdefault("verify", self.ca_cert)
        try:
            resp = self.session.request(method, self.url + path, headers=headers,
                                        timeout=self.timeout, **kwargs)
        except requests.ConnectionError as e:
            raise ApiError(0, "cannot reach the manager at %s (%s): is it running? "
                              "set --url or MEC_CONPAAS_URL" % (self.url, e)) from None
        except requests.exceptions.ChunkedEncodingError as e:
            # The manager stopped while it sent its answer (a restart): what
            # a change asked for may or may not have been stored, as when it
            # cannot be reached after sending.
            raise ApiError(0, "the manager at %s closed the connection in the middle "
                              "of its answer (%s): it may have restarted; check with "
                              "a read (e.g. 'operation list') before repeating a "
                              "change" % (self.url, e)) from None
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:500]
            raise ApiError(resp.status_code, message)
        return resp.json()

    def _keystone_token(self):
        from keystoneauth1 import exceptions as ksa_exc
        try:
            return self.keystone.get_token()
        except ksa_exc.Unauthorized as e:
            raise ApiError(401, "keystone refused your credentials (%s): check "
                                "clouds.yaml or your OS_* variables" % e) from None
        except (ksa_exc.ConnectFailure, ksa_exc.DiscoveryFailure,
                ksa_exc.RequestTimeout) as e:
            raise ApiError(0, "cannot reach keystone to get a token (%s): is "
                              "auth_url right, is keystone up?" % e) from None
        except ksa_exc.ClientException as e:
            raise ApiError(0, "keystone gave no token: %s" % e) from None

    # -- resources ---------------------------------------------------------
    def nodes(self):
        return self.request("GET", "/v1/nodes")["nodes"]

    def node(self, name):
        return self.request("GET", "/v1/nodes/" + name)["node"]

    def drain_node(self, name, reason=None):
        """Disable a node and move its instances away (admin); returns the
        node and the operations moving them."""
        return self.request("POST", "/v1/nodes/%s/drain" % name,
                            json={"reason": reason} if reason else {})

    def enable_node(self, name):
        return self.request("POST", "/v1/nodes/%s/enable" % name)["node"]

    def delete_node(self, name):
        """remove-node (admin): allocation released, credential revoked."""
        return self.request("DELETE", "/v1/nodes/%s" % name)

    def revoke_node_credential(self, name):
        return self.request("POST", "/v1/nodes/%s/credential/revoke" % name)

    def services(self, all_tenants=False):
        return self.request("GET", "/v1/services", params={"all_tenants": "true"}
                            if all_tenants else None)["services"]

    def service(self, name):
        return self.request("GET", "/v1/services/" + name)["service"]

    def create_service(self, stype, name, node=None, bundle=None, count=1, qos=None):
        data = {"type": stype, "name": name, "count": str(count)}
        data.update({k: str(v) for k, v in (qos or {}).items()})
        if node:
            data["node"] = node
        files = None
        if bundle and stype == "flink" and bundle.endswith((".py", ".jar")):
            from mec_conpaas import flink_bundle
            files = {"bundle": ("job.tar.gz", flink_bundle.pack(bundle),
                                "application/gzip")}
        elif bundle:
            files = {"bundle": (os.path.basename(bundle), open(bundle, "rb"),
                                "application/gzip")}
        try:
            return self.request("POST", "/v1/services", data=data, files=files)
        finally:
            if files:
                files["bundle"][1].close()

    def delete_service(self, name, force=False):
        return self.request("DELETE", "/v1/services/" + name,
                            params={"force": "true"} if force else None)

    def scale(self, name, count, node=None):
        body = {"count": count}
        if node:
            body["node"] = node
        return self.request("POST", "/v1/services/%s/scale" % name, json=body)

    def migrate(self, name, to, order=None):
        body = {"to": to, "order": order} if order else {"to": to}
        return self.request("POST", "/v1/services/%s/migrate" % name, json=body)

    def stop(self, name):
        return self.request("POST", "/v1/services/%s/stop" % name)

    def start(self, name):
        return self.request("POST", "/v1/services/%s/start" % name)

    def logs(self, name):
        return self.request("GET", "/v1/services/%s/logs" % name)["logs"]

    def operation(self, op_id):
        return self.request("GET", "/v1/operations/" + op_id)["operation"]

    def operations(self):
        return self.request("GET", "/v1/operations")["operations"]

    def wait(self, op_id, timeout=600, on_progress=None, interval=0.2):
        return self.wait_all([op_id], timeout, on_progress, interval)[0]

    def wait_all(self, op_ids, timeout=600, on_progress=None, interval=0.2):
        """Wait until every operation has ended; return them in order."""
        deadline = time.monotonic() + timeout
        ops = {}
        while True:
            for op_id in op_ids:
                if ops.get(op_id, {}).get("state") not in ("SUCCEEDED", "FAILED"):
                    ops[op_id] = self.operation(op_id)
                    if on_progress:
                        on_progress(ops[op_id])
            pending = [o for o in ops.values()
                       if o["state"] not in ("SUCCEEDED", "FAILED")]
            if not pending:
                return [ops[i] for i in op_ids]
            if time.monotonic() > deadline:
                raise ApiError(0, "operation %s still %s after %ds" % (
                    pending[0]["id"], pending[0]["state"], timeout))
            time.sleep(interval)
