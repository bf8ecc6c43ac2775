"""What migration does for a ``flink`` service beyond any service's steps.

Before the JobManager's instance is frozen, its job is stopped with a
savepoint (Flink's stop-with-savepoint, written into the instance's state
directory, so the final state copy carries it); the JobManager on the
target submits the job again from it.  Records that arrive meanwhile wait
in the gateway (agents/service/flink.py).  A savepoint that cannot be
taken (no job running yet, a TaskManager gone) is logged and the move goes
on: the gateway feeds the records without a result again anyway.
"""
import logging

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope

LOG = logging.getLogger(__name__)
SAVEPOINT_TIMEOUT = 90


def before_freeze(cluster, ctx, service_id, instance_id, role, pct):
    with session_scope() as s:
        svc = s.get(models.Service, service_id)
        if svc is None or svc.type != "flink" or role != "master":
            return None
    try:
        res = cluster.agent_call(cluster.service_agent(instance_id), "/interrupt",
                                 {"savepoint": True}, timeout=SAVEPOINT_TIMEOUT)
    except exception.MecError as e:
        LOG.warning("flink service %s: no savepoint before the move: %s",
                    service_id, e.message)
        return None
    ctx.progress(pct, "Flink job stopped with savepoint %s%s" % (
        res.get("savepoint"), " (%s)" % res["detail"] if res.get("detail") else ""))
    return res
