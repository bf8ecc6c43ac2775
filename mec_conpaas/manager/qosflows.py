"""The QoS policies' operations (see manager/qos.py): resize and evict."""
import logging

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import qos
from mec_conpaas.manager import workflows

LOG = logging.getLogger(__name__)


class ResizeInstance(workflows.Workflow):
    """Grow or shrink one container by a unit, live (``params``:
    ``instance``, ``cpus``, ``memory_mb``, ``reason``).  The node agent
    refuses a size that would take the node's reserve; the row keeps the
    size the container has."""

    def run(self, ctx):
        sid, iid = ctx.service_id, ctx.params["instance"]
        ctx.record(note=ctx.params.get("reason", "resized"))
        with session_scope() as s:
            inst = s.get(models.Instance, iid)
            if inst is None or inst.service_id != sid or inst.state != "ACTIVE":
                ctx.record(note="nothing to do: instance %s is gone" % iid)
                self.set_state(sid, "RUNNING")
                return
            ref = self.cluster.node_ref(s, inst.node_name)
        got = ref.agent.instance_call("POST", iid, "/resize", {
            "cpus": ctx.params["cpus"], "memory_mb": ctx.params["memory_mb"]})
        with session_scope() as s:
            inst = s.get(models.Instance, iid)
            if inst is not None:
                inst.cpus = float(ctx.params["cpus"])
                inst.memory_mb = int(ctx.params["memory_mb"])
        LOG.info("instance %s resized: %s", iid, got)
        self.set_state(sid, "RUNNING")

    def rollback(self, ctx, message):
        self.set_state(ctx.service_id, "RUNNING", message)


class EvictService(workflows.MigrateService):
    """An eviction: the migration of a lower-priority instance off a node
    that is short (``params``: ``moves``, ``home``, ``reason``), make-
    before-break, so the evicted service keeps serving."""

    def run(self, ctx):
        ctx.record(note=ctx.params.get("reason", "evicted"))
        super().run(ctx)


def wait_for_room(ctx, timeout):
    """A create admitted by evicting others waits for those evictions
    (``params["after"]``); InsufficientCapacity if one failed."""
    failed = qos.wait_for(ctx.params.get("after") or [], timeout)
    if failed:
        raise exception.InsufficientCapacity(
            "the evictions that were to make room did not succeed: %s; "
            "retry, or choose another node" % "; ".join(failed))


def workflows_for(cluster):
    return {"resize": ResizeInstance(cluster), "evict": EvictService(cluster)}
