"""The ``lxc`` driver: libvirt LXC containers run by each node's agent.

This is the reference driver (the embedded edge runs on it) and the
model for others: every call is one request to the node agent, which owns
libvirt on its node.
"""
from mec_conpaas import exception
from mec_conpaas.agents.node import httpserver
from mec_conpaas.drivers import base


class LxcDriver(base.CloudDriver):
    name = "lxc"
    features = frozenset({base.FEATURE_FREEZE, base.FEATURE_STATE_COPY,
                          base.FEATURE_LOGS})

    @staticmethod
    def _call(node, method, path, body=None, timeout=60, raw=False):
        return httpserver.call(method, node.url + path, node.agent_token, body,
                               timeout=timeout, raw=raw,
                               content_type="application/x-tar")

    def create_instance(self, node, spec):
        return self._call(node, "POST", "/v1/instances", {
            "id": spec.id, "service_id": spec.service_id,
            "service_name": spec.service_name,
            "service_type": spec.service_type,
            "bundle_sha256": spec.bundle_sha256, "memory_mb": spec.memory_mb,
            "cpus": spec.cpus, "role": spec.role, "master_ip": spec.master_ip,
            "hold": spec.hold,
        }, timeout=180)

    def delete_instance(self, node, instance_id):
        try:
            self._call(node, "DELETE", "/v1/instances/%s" % instance_id)
        except exception.NodeError as e:
            if getattr(e, "remote_status", None) != 404:
                raise

    def list_instances(self, node):
        return self._call(node, "GET", "/v1/instances")["instances"]

    def freeze(self, node, instance_id, quiesce_port=None):
        return self._call(node, "POST", "/v1/instances/%s/freeze" % instance_id,
                          {"quiesce_port": quiesce_port})

    def thaw(self, node, instance_id):
        self._call(node, "POST", "/v1/instances/%s/thaw" % instance_id)

    def copy_state(self, src, src_id, dst, dst_id, final=False):
        if final:
            # The source pushes the delta since the bulk copy it served.
            return self._call(src, "POST", "/v1/instances/%s/state/push" % src_id, {
                "target": {"url": dst.url, "token": dst.agent_token,
                           "instance_id": dst_id}}, timeout=600)
        return self._call(dst, "POST", "/v1/instances/%s/state/pull" % dst_id, {
            "source": {"url": src.url, "token": src.agent_token,
                       "instance_id": src_id}}, timeout=600)

    def freeze_and_copy(self, src, src_id, dst, dst_id, quiesce_port=None,
                        restore=False):
        # One request: the source agent freezes, then pushes the delta; the
        # target's node agent has the app take it up (a local call).
        return self._call(src, "POST", "/v1/instances/%s/state/push" % src_id, {
            "freeze": {"quiesce_port": quiesce_port},
            "target": {"url": dst.url, "token": dst.agent_token,
                       "instance_id": dst_id, "restore": restore}}, timeout=600)

    def export_state(self, node, instance_id):
        return self._call(node, "GET", "/v1/instances/%s/state/archive" % instance_id,
                          raw=True, timeout=600)

    def import_state(self, node, instance_id, data):
        self._call(node, "POST", "/v1/instances/%s/state/import" % instance_id,
                   data, timeout=600)

    def logs(self, node, instance_id):
        return self._call(node, "GET", "/v1/instances/%s/logs" % instance_id)["log"]


def load(name):
    if name == "lxc":
        return LxcDriver()
    # Until the loader reads the mec_conpaas.drivers entry point (helper
    # driverapi's change): the openstack driver.
    if name == "openstack":
        from mec_conpaas.drivers import openstack
        return openstack.OpenstackDriver()
    raise exception.MecError("unknown [manager] driver %r; known: lxc, openstack" % name)
