"""The ``lxc`` driver: libvirt LXC containers run by each node's agent.

This is the reference driver (the embedded edge runs on it) and the
model for others: every call is one request to the node agent, which owns
libvirt on its node.
"""
from mec_conpaas import exception
from mec_conpaas.drivers import base


class LxcDriver(base.CloudDriver):
    name = "lxc"
    features = frozenset({base.FEATURE_FREEZE, base.FEATURE_STATE_COPY,
                          base.FEATURE_STATE_EXPORT, base.FEATURE_LOGS})

    def node_can_host(self, node):
        # A node agent started with container_backend = none (a node that
        # only proxies) runs no containers itself.
        return node.container_backend == "libvirt" and super().node_can_host(node)

    def create_instance(self, node, spec):
        return node.agent.call("POST", "/v1/instances", {
            "id": spec.id, "service_id": spec.service_id,
            "service_name": spec.service_name,
            "service_type": spec.service_type,
            "bundle_sha256": spec.bundle_sha256, "memory_mb": spec.memory_mb,
            "cpus": spec.cpus, "role": spec.role, "master_ip": spec.master_ip,
            "hold": spec.hold,
        }, timeout=180)

    def delete_instance(self, node, instance_id, handle=None):
        try:
            node.agent.instance_call("DELETE", instance_id)
        except exception.NodeError as e:
            if getattr(e, "remote_status", None) != 404:
                raise

    def list_instances(self, node):
        return node.agent.call("GET", "/v1/instances")["instances"]

    def freeze(self, node, instance_id, quiesce_port=None):
        return node.agent.instance_call("POST", instance_id, "/freeze",
                                        {"quiesce_port": quiesce_port})

    def thaw(self, node, instance_id):
        node.agent.instance_call("POST", instance_id, "/thaw")

    def stop_frozen(self, node, instance_id):
        return node.agent.instance_call("POST", instance_id, "/stop-frozen", {})

    def copy_state(self, src, src_id, dst, dst_id, final=False):
        if final:
            # The source pushes the delta since the bulk copy it served.
            return src.agent.instance_call("POST", src_id, "/state/push", {
                "target": dict(dst.agent.peer(), instance_id=dst_id)}, timeout=600)
        return dst.agent.instance_call("POST", dst_id, "/state/pull", {
            "source": dict(src.agent.peer(), instance_id=src_id)}, timeout=600)

    def warm_final_copy(self, src, src_id, dst, dst_id):
        return src.agent.instance_call("POST", src_id, "/state/push", {
            "warm": True, "target": dict(dst.agent.peer(), instance_id=dst_id)})

    def freeze_and_copy(self, src, src_id, dst, dst_id, quiesce_port=None,
                        restore=False, warmed=False):
        # One request: the source agent freezes, then pushes the delta; the
        # target's node agent has the app take it up (a local call).
        return src.agent.instance_call("POST", src_id, "/state/push", {
            "freeze": {"quiesce_port": quiesce_port, "warm": not warmed},
            "target": dict(dst.agent.peer(), instance_id=dst_id,
                           restore=restore)}, timeout=600)

    def export_state(self, node, instance_id):
        return node.agent.instance_call("GET", instance_id, "/state/archive",
                                        raw=True, timeout=600)

    def import_state(self, node, instance_id, data):
        node.agent.instance_call("POST", instance_id, "/state/import", data,
                                 timeout=600)

    def logs(self, node, instance_id):
        return node.agent.logs(instance_id)
