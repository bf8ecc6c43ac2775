"""Persisted operations.

Every mutating API call stores an operation and returns; a worker thread
runs it.  Each workflow records what it has done in the operation's
journal *before* acting on the outside world, so a manager restarted after
SIGKILL can resume every unfinished operation: roll it forward where the
journal says the point of no return was passed, back otherwise.
"""
import concurrent.futures
import logging
import threading
import traceback

from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope

LOG = logging.getLogger(__name__)
TERMINAL = ("SUCCEEDED", "FAILED")


class OperationContext:
    """What a workflow sees of its operation."""

    def __init__(self, op_id, resumed):
        self.op_id = op_id
        self.resumed = resumed
        with session_scope() as s:
            op = s.get(models.Operation, op_id)
            self.kind = op.kind
            self.params = dict(op.params or {})
            self.journal = dict(op.journal or {})
            self.service_id = op.service_id

    def progress(self, pct, step):
        LOG.info("operation %s (%s): %d%% %s", self.op_id, self.kind, pct, step)
        with session_scope() as s:
            op = s.get(models.Operation, self.op_id)
            op.progress = pct
            op.step = step[:255]

    def record(self, **entries):
        self.journal.update(entries)
        with session_scope() as s:
            s.get(models.Operation, self.op_id).journal = dict(self.journal)


class Engine:

    def __init__(self, workflows, workers=4):
        self.workflows = workflows
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="operation")
        self.running = set()
        self.lock = threading.Lock()

    def submit(self, op_id, resumed=False):
        with self.lock:
            if op_id in self.running:
                return
            self.running.add(op_id)
        self.pool.submit(self._run, op_id, resumed)

    def _run(self, op_id, resumed):
        try:
            with session_scope() as s:
                op = s.get(models.Operation, op_id)
                op.state = "RUNNING"
                op.attempts += 1
            ctx = OperationContext(op_id, resumed)
            workflow = self.workflows[ctx.kind]
            try:
                workflow.run(ctx)
            except Exception as e:
                LOG.error("operation %s failed: %s\n%s", op_id, e,
                          traceback.format_exc())
                message = getattr(e, "message", None) or str(e) or type(e).__name__
                try:
                    workflow.rollback(ctx, message)
                    message += " (rolled back)"
                except Exception as e2:
                    LOG.exception("rollback of %s failed", op_id)
                    message += "; rollback failed too: %s" % e2
                with session_scope() as s:
                    op = s.get(models.Operation, op_id)
                    op.state = "FAILED"
                    op.error = message
                return
            with session_scope() as s:
                op = s.get(models.Operation, op_id)
                op.state = "SUCCEEDED"
                op.progress = 100
                op.step = "done"
        finally:
            with self.lock:
                self.running.discard(op_id)

    def resume_all(self):
        with session_scope() as s:
            ids = s.scalars(select(models.Operation.id).where(
                models.Operation.state.in_(("PENDING", "RUNNING")))
                .order_by(models.Operation.created_at)).all()
        for op_id in ids:
            LOG.warning("resuming operation %s left unfinished", op_id)
            self.submit(op_id, resumed=True)
        return ids

    def idle(self):
        with self.lock:
            return not self.running

    def shutdown(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
