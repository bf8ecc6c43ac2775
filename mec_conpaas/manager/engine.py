"""Persisted operations.

Every mutating API call stores an operation and returns; a worker thread
runs it.  Each workflow records what it has done in the operation's
journal *before* acting on the outside world, so a manager restarted after
SIGKILL can resume every unfinished operation: roll it forward where the
journal says the point of no return was passed, back otherwise.

One operation at a time holds a service (``services.operation_id``).  The
API claims the service with a conditional UPDATE in the same transaction
that stores the operation, so of two calls racing on any SQL backend
exactly one wins; the engine releases the service when the operation ends
and leaves it RUNNING, or ERROR with the reason: never in a state in which
nothing is accepted any more.  A failed attempt is retried with backoff up
to ``[manager] operation_max_attempts``, counted across restarts.
"""
import concurrent.futures
import logging
import threading
import traceback

from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import metrics

LOG = logging.getLogger(__name__)
TERMINAL = ("SUCCEEDED", "FAILED")
# Service states only an operation in progress may leave a service in.
TRANSITIONAL = ("INIT", "PROLOGUE", "ADAPTING", "EPILOGUE")


def refuse(session, svc, allowed, action):
    """Raise the Conflict that says why ``svc`` cannot be ``action`` now,
    if it cannot: an operation holds it, or its state is not ``allowed``."""
    holder = svc.operation_id and session.get(models.Operation, svc.operation_id)
    if holder:
        raise exception.Conflict(
            "service %s is busy with operation %s (%s, %s): wait until it ends "
            "(mec-conpaas operation show %s), then retry" % (
                svc.name, holder.id, holder.kind, holder.state, holder.id))
    if allowed is not None and svc.state not in allowed:
        raise exception.Conflict(
            "service %s is %s; it can be %s only when %s%s" % (
                svc.name, svc.state, action, " or ".join(allowed),
                ": delete it (mec-conpaas service show %s says what failed)"
                % svc.name if svc.state == "ERROR" else ""))


def claim(session, svc, op_id, state, allowed=None, action="changed"):
    """Make ``op_id`` the operation holding ``svc`` and set its state, or
    raise Conflict naming what holds it.

    Decided by the store (UPDATE ... WHERE operation_id IS NULL, checked by
    its row count) in the caller's transaction, so exactly one of two
    racing calls wins on SQLite, MySQL and PostgreSQL alike.
    """
    cond = [models.Service.id == svc.id, models.Service.operation_id.is_(None)]
    if allowed is not None:
        cond.append(models.Service.state.in_(allowed))
    res = session.execute(update(models.Service).where(*cond).values(
        operation_id=op_id, state=state, error=None)
        .execution_options(synchronize_session=False))
    session.expire(svc)
    if res.rowcount != 1:
        refuse(session, svc, allowed, action)
        # Neither held nor in the wrong state any more: it changed under us.
        raise exception.Conflict("service %s changed during the request: retry"
                                 % svc.name)


def new_operation(session, kind, svc, state, allowed=None, action="changed",
                  **params):
    """Store an operation on ``svc`` that holds it (Conflict if another one
    does or its state is not ``allowed``); it belongs to the service's
    tenant.  The API's calls and the manager's own operations (``heal``)
    start the same way, so they exclude each other alike."""
    op = models.Operation(tenant_id=svc.tenant_id, service_id=svc.id,
                          service_name=svc.name, kind=kind, params=params,
                          journal={})
    session.add(op)
    session.flush()
    claim(session, svc, op.id, state, allowed, action)
    return op


def settle(svc, message):
    """Leave a service no operation holds in a state that accepts calls."""
    if svc.state in TRANSITIONAL:
        svc.state = "RUNNING" if svc.state == "ADAPTING" else "ERROR"
        svc.error = message


def release(session, op_id, message=None):
    """Let go of the service ``op_id`` holds (in the transaction that ends
    the operation)."""
    op = session.get(models.Operation, op_id)
    svc = op.service_id and session.get(models.Service, op.service_id)
    if svc is not None and svc.operation_id == op_id:
        svc.operation_id = None
        settle(svc, message or "operation %s ended before its service "
                               "settled" % op_id)


def release_ended(session):
    """Free services still held by an operation that has ended or is gone
    (a store written by an older manager, or edited by hand)."""
    for svc in session.scalars(select(models.Service).where(
            models.Service.operation_id.is_not(None))):
        op_id = svc.operation_id
        op = session.get(models.Operation, op_id)
        if op is not None and op.state in TERMINAL:
            # SQLite (pysqlite) reads each SELECT on its own: the operation
            # may have ended, releasing the service in the same commit,
            # between the two reads.  Then this row is stale (still held,
            # still in its transitional state) and settling it wrote ERROR
            # over the RUNNING service the operation had just left.
            session.refresh(svc)
            if svc.operation_id != op_id:
                continue
        if op is None or op.state in TERMINAL:
            LOG.warning("service %s was still held by ended operation %s: "
                        "released", svc.name, op_id)
            svc.operation_id = None
            settle(svc, (op and op.error) or "operation %s ended before its "
                        "service settled" % op_id)


def leftovers(session, node_name=None):
    """Instances no running operation accounts for (being built, standing
    by or being deleted, with no service or a service no operation holds):
    the sweep's to remove, on ``node_name`` only if given."""
    query = (select(models.Instance.id)
             .outerjoin(models.Service, models.Service.id == models.Instance.service_id)
             .where(models.Instance.state.in_(("BUILDING", "STANDBY", "DELETING")),
                    or_(models.Instance.service_id.is_(None),
                        models.Service.operation_id.is_(None))))
    if node_name is not None:
        query = query.where(models.Instance.node_name == node_name)
    return list(session.scalars(query))


def retryable(error):
    """Whether another attempt may succeed: not for what the user caused."""
    return not (isinstance(error, exception.MecError) and error.status < 500)


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
            self.attempts = op.attempts

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

    def __init__(self, workflows, conf):
        self.workflows = workflows
        self.max_attempts = conf.manager.operation_max_attempts
        self.retry_delay = conf.manager.operation_retry_delay
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.manager.operation_workers,
            thread_name_prefix="operation")
        self.running = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def submit(self, op_id, resumed=False):
        with self.lock:
            if op_id in self.running or self.stop.is_set():
                return
            self.running.add(op_id)
        self.pool.submit(self._run, op_id, resumed)

    def _run(self, op_id, resumed):
        retry_in = None
        try:
            with session_scope() as s:
                op = s.get(models.Operation, op_id)
                if op is None or op.state in TERMINAL:
                    return
                give_up = op.attempts >= self.max_attempts
                last_error = op.error
                if not give_up:
                    op.state = "RUNNING"
                    op.attempts += 1
            ctx = OperationContext(op_id, resumed)
            workflow = self.workflows[ctx.kind]
            if give_up:
                # Every attempt was cut short (a crash loop), or the manager
                # stopped while it waited to retry.
                self._fail(ctx, workflow, "gave up after %d attempt(s): %s" % (
                    ctx.attempts, last_error or "the manager stopped during each"))
                return
            try:
                workflow.run(ctx)
            except Exception as e:
                LOG.error("operation %s attempt %d failed: %s\n%s", op_id,
                          ctx.attempts, e, traceback.format_exc())
                message = getattr(e, "message", None) or str(e) or type(e).__name__
                if retryable(e) and ctx.attempts < self.max_attempts:
                    retry_in = self.retry_delay * 2 ** (ctx.attempts - 1)
                    with session_scope() as s:
                        op = s.get(models.Operation, op_id)
                        op.state = "PENDING"
                        op.error = "attempt %d failed: %s" % (ctx.attempts, message)
                        op.step = ("attempt %d of %d in %d s" % (
                            ctx.attempts + 1, self.max_attempts, retry_in))
                    return
                if ctx.attempts > 1:
                    message = "attempt %d of %d: %s" % (ctx.attempts,
                                                         self.max_attempts, message)
                self._fail(ctx, workflow, message)
                return
            with session_scope() as s:
                op = s.get(models.Operation, op_id)
                op.state = "SUCCEEDED"
                op.progress = 100
                op.error = None
                op.step = ctx.journal.get("note") or "done"
                release(s, op_id)
                metrics.operation_ended(op)
        except Exception:
            # The store itself failed: the operation stays unfinished and is
            # resumed by the next start (its attempt counted).
            LOG.exception("operation %s: cannot record its outcome", op_id)
        finally:
            with self.lock:
                self.running.discard(op_id)
            if retry_in is not None:
                timer = threading.Timer(retry_in, self.submit, (op_id, True))
                timer.daemon = True
                timer.start()

    def _fail(self, ctx, workflow, message):
        """Roll back once (a rollback cut short by a crash is not repeated:
        the sweep removes what it left) and release the service."""
        if not ctx.journal.get("rolling_back"):
            ctx.record(rolling_back=True)
            try:
                workflow.rollback(ctx, message)
                message += " (rolled back)"
            except Exception as e:
                LOG.exception("rollback of %s failed", ctx.op_id)
                message += "; rollback failed too: %s" % (
                    getattr(e, "message", None) or e)
        with session_scope() as s:
            op = s.get(models.Operation, ctx.op_id)
            op.state = "FAILED"
            op.error = message
            release(s, ctx.op_id, message)
            metrics.operation_ended(op)
        LOG.error("operation %s (%s) FAILED: %s", ctx.op_id, ctx.kind, message)

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
        self.stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
