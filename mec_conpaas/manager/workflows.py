"""Service workflows: create, scale, migrate, stop, start, delete, heal.

Each ``run`` is idempotent: after a manager restart the engine calls it
again with ``ctx.resumed`` set, and it first removes what an interrupted
attempt left half-made (instance rows still BUILDING or STANDBY, and their
containers) before converging on the operation's goal.
"""
import json
import logging
import os
import shutil
import time

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.drivers import base
from mec_conpaas.manager import engine
from mec_conpaas.manager import flinkjobs
from mec_conpaas.manager import nodeloss
from mec_conpaas.manager import services as services_mod
from mec_conpaas.manager import snapshots
from mec_conpaas.policies import placement

LOG = logging.getLogger(__name__)
APP_PORT = 8080
# Migration's pre-copy: delta rounds after the bulk copy, while the source
# serves, until a round moves no more than PRECOPY_SMALL bytes.
PRECOPY_ROUNDS = 3
PRECOPY_SMALL = 1 << 20


class Workflow:

    def __init__(self, cluster):
        self.cluster = cluster
        self.driver = cluster.driver
        # The decisions the API takes too (placement, capacity).
        self.services = services_mod.Services(cluster)

    # -- shared steps ----------------------------------------------------
    def set_state(self, service_id, state, error=None):
        with session_scope() as s:
            svc = s.get(models.Service, service_id)
            if svc is not None:
                svc.state = state
                svc.error = error

    def start_instance(self, ctx, service_id, node_name, state_after="ACTIVE",
                       role=None, fill=None):
        """Create one instance and wait until it is healthy.

        ``fill(node_ref, instance_id)``, if given, puts the instance's state
        in while it is held: its app starts only afterwards, so an app that
        reads its state when it starts sees it.  ``role``: ``master`` or
        ``worker``; by default the instance is the master when the service
        has none (its first instance).
        """
        with session_scope() as s:
            svc = s.get(models.Service, service_id)
            ref = self.cluster.node_ref(s, node_name)
            if role is None:
                has_master = s.scalar(select(models.Instance.id).where(
                    models.Instance.service_id == service_id,
                    models.Instance.role == "master",
                    models.Instance.state != "DELETING").limit(1))
                role = "worker" if has_master else "master"
            inst = models.Instance(service_id=service_id, node_name=node_name,
                                   state="BUILDING", role=role)
            s.add(inst)
            s.flush()
            spec = base.InstanceSpec(
                id=inst.id, service_id=svc.id, service_name=svc.name,
                service_type=svc.type, bundle_sha256=svc.bundle_sha256,
                memory_mb=svc.memory_mb, cpus=svc.cpus, role=role,
                hold=fill is not None)
        ctx.record(created=ctx.journal.get("created", []) + [spec.id])
        info = self.driver.create_instance(ref, spec)
        with session_scope() as s:
            inst = s.get(models.Instance, spec.id)
            inst.address = info["address"]
            inst.handle = info.get("handle")
        agent = ref.agent.service_agent(spec.id, info["address"])
        if fill is None:
            self.cluster.wait_healthy(agent)
        else:
            fill(ref, spec.id)
            self.cluster.start_app(agent)
        with session_scope() as s:
            s.get(models.Instance, spec.id).state = state_after
        return spec.id

    def commit(self, ctx, states, also=None, **journal):
        """Instance states and journal entries in one transaction: the
        point of no return of a step, for a resumed run to see exactly.
        ``also(session)`` makes the step's other changes in it."""
        with session_scope() as s:
            for iid, state in states.items():
                s.get(models.Instance, iid).state = state
            if also is not None:
                also(s)
            ctx.journal.update(journal)
            s.get(models.Operation, ctx.op_id).journal = dict(ctx.journal)

    def destroy_instance(self, instance_id, ctx=None, force=False):
        """Remove an instance's container, then its row.

        On a node that is down (no heartbeat) nothing can be removed: the
        row stays DELETING, keeping the node's slot counted, and the sweep
        removes the container when the node is back.  ``force`` (an
        admin's delete) forgets the row also when the node fails to answer;
        the sweep removes the container as an orphan then.  Returns whether
        the instance is gone.
        """
        with session_scope() as s:
            inst = s.get(models.Instance, instance_id)
            if inst is None:
                return True
            node = s.scalar(select(models.Node).where(
                models.Node.name == inst.node_name))
            down = node is None or not self.cluster.is_up(node)
            handle = inst.handle
            if down:
                inst.state = "DELETING"
                if force:
                    s.delete(inst)
            else:
                ref = self.cluster.ref(node)
        if down:
            left = "forgotten" if force else "left"
            LOG.warning("instance %s is on %s, which is down: %s for the sweep",
                        instance_id, inst.node_name, left)
            if ctx is not None:
                ctx.record(left=sorted(set(ctx.journal.get("left", []))
                                       | {"%s@%s" % (instance_id, inst.node_name)}))
            return force
        try:
            self.driver.delete_instance(ref, instance_id, handle)
        except exception.NodeError as e:
            if not force:
                raise
            LOG.warning("forgetting instance %s on %s: %s", instance_id,
                        ref.name, e.message)
        with session_scope() as s:
            inst = s.get(models.Instance, instance_id)
            if inst is not None:
                s.delete(inst)
        return True

    def instances(self, service_id, states):
        with session_scope() as s:
            return [i.id for i in s.scalars(select(models.Instance).where(
                models.Instance.service_id == service_id,
                models.Instance.state.in_(states))
                .order_by(models.Instance.created_at))]

    def cleanup_unfinished(self, ctx, service_id):
        for iid in self.instances(service_id, ("BUILDING", "STANDBY")):
            LOG.warning("removing unfinished instance %s", iid)
            self.destroy_instance(iid, ctx)

    def finish_removals(self, ctx, service_id):
        """Remove the instances an interrupted attempt had taken out of
        service (DELETING): the proxies first, then the containers."""
        gone = self.instances(service_id, ("DELETING",))
        if gone:
            self.cluster.push_proxies()
            for iid in gone:
                LOG.warning("removing instance %s left DELETING", iid)
                self.destroy_instance(iid, ctx)

    def recover(self, ctx):
        """What a resumed attempt does first: clear what the last one left
        half-made or half-removed."""
        self.cleanup_unfinished(ctx, ctx.service_id)
        self.finish_removals(ctx, ctx.service_id)

    def best_effort(self, *steps):
        """Run every step of a rollback even when one fails; raise the
        first error after all were tried."""
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:
                LOG.exception("rollback step failed")
                errors.append(e)
        if errors:
            raise errors[0]

    def active(self, service_id):
        with session_scope() as s:
            return [(i.id, i.node_name, i.address) for i in s.scalars(
                select(models.Instance).where(
                    models.Instance.service_id == service_id,
                    models.Instance.state == "ACTIVE")
                .order_by(models.Instance.created_at))]

    def masters(self, service_id):
        with session_scope() as s:
            return set(s.scalars(select(models.Instance.id).where(
                models.Instance.service_id == service_id,
                models.Instance.role == "master")))

    def grow(self, ctx, service_id, count, home, node=None):
        """Add instances: on ``node`` if named, else by placement policy."""
        with session_scope() as s:
            targets = self.services.place(s, count, home, only=node,
                                          need=self.services.size(s, service_id))
        for n, node in enumerate(targets, 1):
            ctx.progress(10 + int(70 * (n - 1) / len(targets)),
                         "starting instance %d/%d on %s" % (n, len(targets), node))
            self.start_instance(ctx, service_id, node)

    def rollback_created(self, ctx, service_id):
        for iid in ctx.journal.get("created", []):
            self.destroy_instance(iid, ctx)

    def finish(self, ctx):
        """What the operation's last step says when it ends."""
        if ctx.journal.get("left"):
            ctx.record(note="done; on a down node, removed when it is back: "
                       + ", ".join(ctx.journal["left"]))


class CreateService(Workflow):

    def run(self, ctx):
        sid = ctx.service_id
        if ctx.params.get("after"):  # admitted by evicting lower priorities
            from mec_conpaas.manager import qosflows
            ctx.progress(2, "waiting for the evictions that make room")
            qosflows.wait_for_room(ctx, 2 * self.cluster.conf.manager.health_timeout
                                   + 120)
        self.cleanup_unfinished(ctx, sid)
        self.set_state(sid, "PROLOGUE")
        with session_scope() as s:
            home = s.get(models.Service, sid).home_node
        missing = ctx.params.get("count", 1) - len(self.active(sid))
        if missing > 0:  # all on the home when admitted there (services.admit)
            self.grow(ctx, sid, missing, home, home if ctx.params.get("pin") else None)
        ctx.progress(85, "configuring the access points' proxies")
        self.cluster.push_proxies()
        self.cluster.notify_peers(sid)
        self.set_state(sid, "RUNNING")
        self.finish(ctx)

    def rollback(self, ctx, message):
        sid = ctx.service_id
        with session_scope() as s:
            ids = [i.id for i in s.scalars(select(models.Instance).where(
                models.Instance.service_id == sid))]
        self.best_effort(
            *[lambda iid=iid: self.destroy_instance(iid, ctx) for iid in ids],
            lambda: self.set_state(sid, "ERROR", message),
            self.cluster.push_proxies)


class ScaleService(Workflow):

    def run(self, ctx):
        sid = ctx.service_id
        target = ctx.params["count"]
        if ctx.resumed:
            self.recover(ctx)
        self.set_state(sid, "ADAPTING")
        current = self.active(sid)
        with session_scope() as s:
            home = s.get(models.Service, sid).home_node
        if target > len(current):
            self.grow(ctx, sid, target - len(current), home, ctx.params.get("node"))
            ctx.progress(85, "adding the new instances to the proxies")
            self.cluster.push_proxies()
        elif target < len(current):
            with session_scope() as s:
                names = [n.name for n in self.cluster.nodes(s)]
            seq = {iid: n for n, (iid, _, _) in enumerate(current)}
            # The master goes last: only when the service scales to 0.
            masters = self.masters(sid) if target else set()
            # ``remove_from`` (a policy's): only instances on these nodes.
            where = ctx.params.get("remove_from")
            chosen = placement.victims(
                len(current) - target, home,
                [{"id": i, "node": n, "seq": seq[i]} for i, n, _ in current
                 if i not in masters and (not where or n in where)],
                self.cluster.distances(names))
            gone = [c["id"] for c in chosen]
            ctx.record(removing=gone)
            ctx.progress(30, "draining %d instance(s)" % len(gone))
            # From here a resumed attempt finishes the removal (recover).
            with session_scope() as s:
                for iid in gone:
                    s.get(models.Instance, iid).state = "DELETING"
            self.cluster.push_proxies(draining=gone)
            time.sleep(self.cluster.conf.manager.drain_timeout)
            for n, iid in enumerate(gone, 1):
                ctx.progress(50 + 30 * n // len(gone), "removing instance %s" % iid)
                self.destroy_instance(iid, ctx)
            self.cluster.push_proxies()
        self.cluster.notify_peers(sid)
        self.set_state(sid, "RUNNING")
        self.finish(ctx)

    def rollback(self, ctx, message):
        sid = ctx.service_id
        self.best_effort(
            lambda: self.rollback_created(ctx, sid),
            lambda: self.cleanup_unfinished(ctx, sid),
            # removal is never undone
            *[lambda iid=iid: self.destroy_instance(iid, ctx)
              for iid in ctx.journal.get("removing", [])],
            lambda: self.set_state(sid, "RUNNING", message),
            self.cluster.push_proxies)


class MigrateService(Workflow):
    """Make-before-break migration (MEC-ConPaaS §VI).

    ``migrate`` moves the instances on the service's home node to ``to``,
    which becomes the home.  ``drain`` (an admin's node drain) names each
    instance and its target in ``moves``, and the new ``home`` if the
    drained node was the home.  Instances already moved by an interrupted
    attempt are gone from the store, so a resumed run skips them.
    """

    def run(self, ctx):
        sid = ctx.service_id
        if ctx.resumed:
            self._undo_unswitched(ctx)
            self.recover(ctx)
        self.set_state(sid, "ADAPTING")
        moving = self._moves(ctx)
        for n, (old_id, node, target) in enumerate(moving, 1):
            self._move(ctx, sid, old_id, node, target, n, len(moving))
        home = ctx.params.get("to") or ctx.params.get("home")
        if home:
            with session_scope() as s:
                s.get(models.Service, sid).home_node = home
        ctx.progress(95, "retiring drained proxy slots")
        self.cluster.push_proxies()
        self.cluster.notify_peers(sid)
        self.set_state(sid, "RUNNING")
        self.finish(ctx)

    def _moves(self, ctx):
        """(instance, its node, target) for every instance still to move."""
        active = {i: n for i, n, _ in self.active(ctx.service_id)}
        if "moves" in ctx.params:
            return [(m["instance"], active[m["instance"]], m["to"])
                    for m in ctx.params["moves"] if m["instance"] in active]
        with session_scope() as s:
            source = s.get(models.Service, ctx.service_id).home_node
        return [(i, n, ctx.params["to"]) for i, n in active.items() if n == source]

    def _move(self, ctx, sid, old_id, old_node, target, n, total):
        pct = 5 + 90 * (n - 1) // total
        step = "instance %d/%d: " % (n, total)
        with session_scope() as s:
            old_ref = self.cluster.node_ref(s, old_node)
            role = s.get(models.Instance, old_id).role

        def bulk(to_ref, new_id):
            ctx.record(pair=dict(ctx.journal["pair"], new=new_id))
            ctx.progress(pct + 20 // total, step + "copying state (bulk) into the "
                         "held instance")
            self.driver.copy_state(old_ref, old_id, to_ref, new_id)
            ctx.progress(pct + 30 // total, step + "starting its app")

        ctx.progress(pct, step + "starting a held instance on %s" % target)
        ctx.record(pair={"old": old_id, "new": None, "frozen": False,
                         "switched": False})
        # The role moves with the instance: a migrated master stays master.
        new_id = self.start_instance(ctx, sid, target, state_after="STANDBY",
                                     role=role, fill=bulk)
        pair = dict(ctx.journal["pair"], new=new_id)
        with session_scope() as s:
            to_ref = self.cluster.node_ref(s, target)
        new_agent = self.cluster.service_agent(new_id)
        # Without restore.sh the target's app is stopped now, outside the
        # critical window, and started again once the final delta is in.
        mode = self.cluster.agent_call(new_agent, "/restore",
                                       {"phase": "prepare"})["mode"]
        # Pre-copy rounds while the source still serves: what it wrote
        # since the bulk copy, so that the frozen delta stays small.  Each
        # round is a delta against the manifest the target pulled last
        # (statesync), never against the target's own files, which its app
        # has written since its start (its address file).
        # The proxies' configuration converged before the freeze, so that the
        # switch is runtime commands only: a configuration change still
        # pending (a service created since the last push, say a create
        # waiting for this very eviction) made the switch reload HAProxy,
        # and the old worker kept the requests it held for the frozen
        # source, where the switch never reached them: 503 once the source
        # was killed (test_farcloud_evict's 4-8 x 503).  Best effort: the
        # switch pushes again and fails the step if a node does not take it.
        try:
            self.cluster.push_proxies()
        except exception.NodeError as e:
            LOG.warning("proxies not converged before the freeze: %s", e.message)
        precopy = self._precopy(old_ref, old_id, to_ref, new_id)
        # The switch's proxy plan, made before the window (pushed as is
        # unless another push comes first).
        switch_plan = self.cluster.proxy_plan(draining=[old_id], activating=[new_id])
        flinkjobs.before_freeze(self.cluster, ctx, sid, old_id, role, pct + 60 // total)
        order = "freeze-first"
        if mode == "restore.sh" and (ctx.params.get("order") or self.cluster.conf
                                     .manager.migration_order) == "switch-first":
            # Outside the window: the source's connection to the target
            # for the delta, and the target's app paused.
            self.driver.warm_final_copy(old_ref, old_id, to_ref, new_id)
            try:
                held = self.cluster.agent_call(new_agent, "/restore",
                                               {"phase": "hold"})
            except exception.NodeError as e:
                if getattr(e, "remote_status", None) != 400:
                    raise
                # A service agent older than the switch-first order (an
                # image made before it) knows no "hold".
                LOG.warning("%s cannot hold its app (%s): freeze-first", new_id,
                            e.message)
                held = {}
            if held.get("held"):
                order = "switch-first"
        pair = dict(pair, frozen=True)
        try:
            if order == "switch-first":
                marks, final, pushed = self._switch_then_copy(
                    ctx, pair, new_agent, old_ref, old_id, to_ref, new_id, switch_plan)
            else:
                marks, final, pushed = self._copy_then_switch(
                    ctx, pair, new_agent, old_ref, old_id, to_ref, new_id, switch_plan)
        except Exception as error:
            # Undone at once, not when the next attempt starts (seconds
            # later): until then the frozen source, or the paused target
            # every proxy was routed to, held all of the service's requests.
            try:
                went = self._undo_unswitched(ctx)
            except Exception:
                LOG.exception("undoing the window of moving %s", old_id)
                raise error from None
            if went != "forward":
                raise
            # The target took the delta up after all: this move is done.
            LOG.warning("moving %s: %s; %s took the final delta up: moved",
                        old_id, getattr(error, "message", error), new_id)
            return
        # The critical window: requests wait from its first mark to "end".
        switched_ms = (dict(marks)["end"] - marks[0][1]) * 1000
        steps = {name: round((t - marks[i][1]) * 1000, 1)
                 for i, (name, t) in enumerate(marks[1:]) if name != "end"}
        steps.update(order=order, restore_mode=mode,
                     restore_ms=final["restore"].get("ms"),
                     precopy_rounds=precopy, final_files=final.get("files"),
                     final_bytes=final.get("bytes"),
                     final_manifest_as=final.get("manifest"))
        steps.update({"final_" + k: v for k, v in (final.get("steps_ms") or {}).items()})
        steps.update(freeze_attempts=final.get("freeze_attempts") or 1,
                     quiescent=final.get("quiescent"),
                     switch_plan=(pushed or {}).get("plan"),
                     switch_nodes=(pushed or {}).get("nodes"))
        after = marks[-1][1]
        # At once: requests the proxies sent the old instance while it was
        # frozen wait for its kill (their resets are retried on the new
        # one), so it comes first, alone; the delete (libvirt, unmounts,
        # the row) after.  ``kill``: ms from the switch until the source's
        # agent answered it, an upper bound of the held requests' wait.
        try:
            killed = self.driver.stop_frozen(old_ref, old_id)
        except exception.NodeError as e:  # the delete kills it too
            LOG.warning("stopping frozen %s: %s", old_id, e.message)
            killed = None
        if killed is not None:
            steps["kill"] = round((time.monotonic() - after) * 1000, 1)
            steps["kill_on_node"] = killed.get("ms")
        self.destroy_instance(old_id, ctx)
        self.cluster.unroute(old_id)
        steps["destroy"] = round((time.monotonic() - after) * 1000, 1)
        steps.setdefault("kill", steps["destroy"])
        ctx.progress(pct + 70 // total, step + "%s: requests waited at most %.0f ms "
                     "(%d freeze attempt(s), final copy: %d files, %s %s ms); old "
                     "instance removed" % (
                         order, switched_ms, steps["freeze_attempts"],
                         final.get("files", 0), mode, steps["restore_ms"]))
        # CLOCK_MONOTONIC is the machine's: a client on the same machine
        # (bench/migrate.py) lines its requests up against these: the
        # window's start and end (named for the freeze-first order).
        steps.update(at_freeze=round(marks[0][1], 4),
                     at_switch=round(dict(marks)["end"], 4))
        ctx.record(pair=None, windows=ctx.journal.get("windows", []) + [
            dict(steps, freeze_to_switch=round(switched_ms, 1))])

    def _copy_then_switch(self, ctx, pair, new_agent, old_ref, old_id, to_ref,
                          new_id, switch_plan):
        """Freeze-first: from the source's freeze until every proxy switched,
        requests for this service wait (at the frozen source, until its
        kill makes HAProxy retry them on the target): network round trips,
        and the app taking up the final delta (restore.sh, or its restart).
        The window's marks, the final copy's answer and the switch's."""
        ctx.record(pair=pair)
        marks = [("start", time.monotonic())]
        final = self._final_copy(new_agent, old_ref, old_id, to_ref, new_id)
        marks.append(("freeze_copy_restore", time.monotonic()))
        self.commit(ctx, {new_id: "ACTIVE", old_id: "DELETING"},
                    pair=dict(pair, switched=True))
        marks.append(("commit", time.monotonic()))
        pushed = self.cluster.push_proxies(draining=[old_id], planned=switch_plan)
        marks.append(("switch", time.monotonic()))
        marks.append(("end", marks[-1][1]))
        return marks, final, pushed

    def _switch_then_copy(self, ctx, pair, new_agent, old_ref, old_id, to_ref,
                          new_id, switch_plan):
        """Switch-first: every proxy sends the target (its app paused) this
        service's requests, while the source answers those it has; then
        the source freezes once none is in progress, the final delta moves
        and the target resumes.  Requests wait at the target only for the
        freeze and the delta's one-way trip, and none is left at the
        source to retry.  Until the commit the store still says the target
        is STANDBY: ``Cluster.route`` keeps every push switched, and a
        failure (or a restart: ``_undo_unswitched``) goes back to the
        source unless the target took the final delta up."""
        ctx.record(pair=dict(pair, routed=True))
        self.cluster.route(old_id, new_id)
        marks = [("start", time.monotonic())]
        pushed = self.cluster.push_proxies(draining=[old_id], planned=switch_plan)
        marks.append(("switch", time.monotonic()))
        try:
            final = self._final_copy(new_agent, old_ref, old_id, to_ref, new_id,
                                     warmed=True)
        except exception.NodeError as e:
            if not self._took_final(new_id):
                raise
            # The answer was lost, not the delta: the target serves with it.
            LOG.warning("final copy of %s answered %s, but %s took it up: "
                        "going on", old_id, e.message, new_id)
            final = {"restore": {}}
        marks.append(("freeze_copy_restore", time.monotonic()))
        marks.append(("end", marks[-1][1]))
        self.commit(ctx, {new_id: "ACTIVE", old_id: "DELETING"},
                    pair=dict(pair, routed=True, switched=True))
        marks.append(("commit", time.monotonic()))
        return marks, final, pushed

    def _final_copy(self, new_agent, old_ref, old_id, to_ref, new_id, warmed=False):
        """The source frozen, the final delta moved and taken up by the
        target's app (in the same request where it can, else asked here)."""
        final = self.driver.freeze_and_copy(old_ref, old_id, to_ref, new_id,
                                            quiesce_port=APP_PORT, restore=True,
                                            warmed=warmed)
        if final.get("restore") is None:
            final["restore"] = self.cluster.agent_call(
                new_agent, "/restore", {"phase": "finish"}, timeout=70)
        return final

    def _took_final(self, new_id):
        """Whether a held target took up its migration's final delta (and so
        serves with it): then the migration can only go forward.  Asked
        with ``abort``, which also makes a finish still on its way refuse
        (the answer stays true).  A target that does not answer is taken
        as not: the migration goes back to the source (the target, if it
        did resume meanwhile, loses what it answered; closing note)."""
        try:
            return bool(self.cluster.agent_call(
                self.cluster.service_agent(new_id), "/restore",
                {"phase": "abort"}).get("restored"))
        except (exception.NodeError, exception.NotFound) as e:
            LOG.warning("asking %s whether it took its final delta: %s", new_id,
                        getattr(e, "message", e))
            return False

    def _precopy(self, old_ref, old_id, to_ref, new_id):
        """Delta rounds while the source serves, until one moves at most
        ``PRECOPY_SMALL`` bytes (or ``PRECOPY_ROUNDS`` ran): what each
        round copied, for the window's record."""
        rounds = []
        for _ in range(PRECOPY_ROUNDS):
            t0 = time.monotonic()
            res = self.driver.copy_state(old_ref, old_id, to_ref, new_id) or {}
            rounds.append({"files": res.get("files"), "bytes": res.get("bytes"),
                           "round": res.get("round"),
                           "ms": round(1000 * (time.monotonic() - t0), 1)})
            if (res.get("bytes") or 0) <= PRECOPY_SMALL:
                break
        return rounds

    def _undo_unswitched(self, ctx):
        pair = ctx.journal.get("pair")
        if not pair:
            return
        went = "forward"
        if not pair.get("switched") and pair.get("routed") and pair.get("new") \
                and self._took_final(pair["new"]):
            # Switch-first, and the target serves with the final delta: on.
            self.commit(ctx, {pair["new"]: "ACTIVE", pair["old"]: "DELETING"},
                        pair=dict(pair, switched=True))
            self.cluster.unroute(pair["old"])  # the store says it now
            self.cluster.push_proxies(draining=[pair["old"]])
            pair = ctx.journal["pair"]
        if pair.get("switched"):
            self.cluster.unroute(pair["old"])
            self.destroy_instance(pair["old"], ctx)  # past the point of no return
        else:
            went = "back"
            if pair.get("frozen"):
                self._thaw(pair["old"])
            self.cluster.unroute(pair["old"])
            if pair.get("routed"):
                # Back to the source before the target goes: the requests
                # queued at the paused target are reset then and retried.
                self.cluster.push_proxies()
            if pair.get("new"):
                self.destroy_instance(pair["new"], ctx)
            self.cleanup_unfinished(ctx, ctx.service_id)
            self.cluster.push_proxies()
        ctx.record(pair=None)
        return went

    def _thaw(self, instance_id):
        with session_scope() as s:
            inst = s.get(models.Instance, instance_id)
            if inst is None:
                return
            ref = self.cluster.node_ref(s, inst.node_name)
        try:
            self.driver.thaw(ref, instance_id)
        except exception.NodeError as e:
            LOG.warning("thawing %s: %s", instance_id, e.message)

    def rollback(self, ctx, message):
        self.best_effort(
            lambda: self._undo_unswitched(ctx),
            lambda: self.recover(ctx),
            lambda: self.set_state(ctx.service_id, "RUNNING", message),
            self.cluster.push_proxies)


class StopService(Workflow):
    """ConPaaS's stop: no instance runs, the state and the port stay.

    Every instance leaves the proxies, runs ``cleanup.sh`` and stops its
    app (SIGTERM); then its whole state directory is saved on the manager
    (``$state_path/stopped/SERVICE/``) with its role and node.  Only when
    all are saved (``saved`` in the journal, the point of no return) are
    the containers removed: before it, a failure starts the apps again.
    """

    def run(self, ctx):
        sid = ctx.service_id
        self.set_state(sid, "EPILOGUE")
        with session_scope() as s:
            rows = sorted(s.scalars(select(models.Instance).where(
                models.Instance.service_id == sid)),
                key=lambda i: (i.role != "master", i.created_at))
            ids = [i.id for i in rows if i.state in ("ACTIVE", "DELETING")]
        if not ctx.journal.get("saved"):
            ctx.record(stopping=ids)
            ctx.progress(10, "taking %d instance(s) out of the proxies" % len(ids))
            self.commit(ctx, {iid: "DELETING" for iid in ids})
            self.cluster.push_proxies(draining=ids)
            time.sleep(self.cluster.conf.manager.drain_timeout)
            self._save(ctx, sid, ids)
            ctx.record(saved=True)
        for n, iid in enumerate(ids, 1):
            ctx.progress(60 + 30 * n // len(ids), "removing instance %s" % iid)
            self.destroy_instance(iid, ctx)
        self.set_state(sid, "STOPPED")
        self.cluster.push_proxies()  # the endpoint stays, with no server
        self.finish(ctx)

    def _save(self, ctx, sid, ids):
        path = self.cluster.saved_dir(sid)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        index = []
        for n, iid in enumerate(ids, 1):
            ctx.progress(20 + 40 * n // len(ids), "stopping instance %d/%d "
                         "(cleanup.sh) and saving its state" % (n, len(ids)))
            with session_scope() as s:
                inst = s.get(models.Instance, iid)
                ref = self.cluster.node_ref(s, inst.node_name)
                entry = {"instance": iid, "role": inst.role, "node": inst.node_name,
                         "file": iid + ".tar"}
                agent = ref.agent.service_agent(iid, inst.address)
            try:
                res = self.cluster.agent_call(agent, "/stop", timeout=60)
                LOG.info("instance %s stopped, cleanup.sh exit code %s", iid,
                         res.get("cleanup_exit_code"))
            except exception.NodeError as e:
                # Its app is not running then: what its state directory
                # holds is all there is to save.
                LOG.warning("stopping the app of %s: %s", iid, e.message)
            _write_atomic(os.path.join(path, entry["file"]),
                          self.driver.export_state(ref, iid))
            index.append(entry)
        _write_atomic(os.path.join(path, "index.json"), json.dumps(index).encode())

    def rollback(self, ctx, message):
        sid = ctx.service_id
        if ctx.journal.get("saved"):
            self.run(ctx)  # past the point of no return: finish the stop
            self.set_state(sid, "STOPPED", message)
            return
        with session_scope() as s:
            present = list(s.scalars(select(models.Instance.id).where(
                models.Instance.id.in_(ctx.journal.get("stopping", [])))))
        for iid in present:
            try:
                agent = self.cluster.service_agent(iid)
                self.cluster.agent_call(agent, "/start")  # no-op if still running
                self.cluster.wait_healthy(agent)
            except exception.NodeError as e:
                # Its node is down (why the stop failed, most likely): it
                # is the service's again as it was, for its node's return
                # or, if the node is lost, a heal.
                LOG.warning("stop of %s rolled back: instance %s did not start "
                            "again: %s", sid, iid, e.message)
        self.commit(ctx, {iid: "ACTIVE" for iid in present})
        shutil.rmtree(self.cluster.saved_dir(sid), ignore_errors=True)
        self.cluster.push_proxies()
        self.set_state(sid, "RUNNING", message)


class StartService(Workflow):
    """Bring a stopped service's instances back, each with its saved state
    put in before its app starts, its role, and on its old node when that
    has room (else the nearest with a free slot)."""

    def run(self, ctx):
        sid = ctx.service_id
        if ctx.resumed:
            self.cleanup_unfinished(ctx, sid)
        self.set_state(sid, "PROLOGUE")
        path = self.cluster.saved_dir(sid)
        with open(os.path.join(path, "index.json")) as f:
            index = json.load(f)
        for n, entry in enumerate(index, 1):
            if entry["instance"] in ctx.journal.get("restored", []):
                continue
            with session_scope() as s:
                node = self.services.place(s, 1, entry["node"])[0]
            with open(os.path.join(path, entry["file"]), "rb") as f:
                data = f.read()
            ctx.progress(10 + 75 * (n - 1) // len(index), "starting instance "
                         "%d/%d (%s) on %s with its saved state" % (
                             n, len(index), entry["role"], node))
            new_id = self.start_instance(
                ctx, sid, node, state_after="STANDBY", role=entry["role"],
                fill=lambda ref, iid, data=data: self.driver.import_state(ref, iid, data))
            self.commit(ctx, {new_id: "ACTIVE"}, restored=ctx.journal.get(
                "restored", []) + [entry["instance"]])
        ctx.progress(90, "adding the instances to the proxies")
        self.cluster.push_proxies()
        self.cluster.notify_peers(sid)
        shutil.rmtree(path, ignore_errors=True)
        self.set_state(sid, "RUNNING")
        self.finish(ctx)

    def rollback(self, ctx, message):
        # The saved state stays: start can be retried.
        self.rollback_created(ctx, ctx.service_id)
        self.cluster.push_proxies()
        self.set_state(ctx.service_id, "STOPPED", message)


def _write_atomic(path, data):
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DeleteService(Workflow):
    """Remove every instance, then the service.

    Instances on a down node stay DELETING, detached from the service, until
    the sweep removes them when the node is back; ``force`` (an admin's)
    forgets the ones it cannot reach, and the proxies it cannot update.
    """

    def run(self, ctx):
        sid = ctx.service_id
        force = bool(ctx.params.get("force"))
        self.set_state(sid, "EPILOGUE")
        with session_scope() as s:
            ids = [i.id for i in s.scalars(select(models.Instance).where(
                models.Instance.service_id == sid))]
            for iid in ids:
                s.get(models.Instance, iid).state = "DELETING"
        ctx.progress(20, "removing the endpoint from the proxies")
        try:
            self.cluster.push_proxies()
        except exception.NodeError as e:
            if not force:
                raise
            LOG.warning("forced delete of %s: %s", sid, e.message)
        for n, iid in enumerate(ids, 1):
            ctx.progress(20 + 70 * n // max(1, len(ids)), "removing instance %s" % iid)
            self.destroy_instance(iid, ctx, force=force)
        shutil.rmtree(self.cluster.saved_dir(sid), ignore_errors=True)
        with session_scope() as s:
            svc = s.get(models.Service, sid)
            if svc is not None:
                for inst in list(svc.instances):
                    inst.service_id = None  # left on a down node: the sweep's
                sha = svc.bundle_sha256
                s.delete(svc)
                s.flush()
                shared = s.scalar(select(models.Service.id).where(
                    models.Service.bundle_sha256 == sha).limit(1))
                if shared is None:
                    self.cluster.forget_bundle(sha)
        self.finish(ctx)

    def rollback(self, ctx, message):
        self.set_state(ctx.service_id, "ERROR", message)


def _restored_note(entry):
    """What a heal's last step says a replacement started with: what the
    user may have lost is what was written after it."""
    if not entry["snapshot_taken_at"]:
        what = "no snapshot: empty state"
    else:
        what = "snapshot of %s, %d bytes" % (time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["snapshot_taken_at"])),
            entry["bytes"])
    return "re-placed %s with %s (%s)" % (entry["lost"], entry["new"], what)


class HealService(Workflow):
    """Re-place the instances a lost node took with it (``heal``, started
    by ``nodeloss``, never by a user).

    ``params["nodes"]``: ``{lost node: why}``.  Each ACTIVE instance there
    gets a replacement on the node placement chooses nearest to the
    service's home (never a down, disabled or lost one), started held
    with the lost instance's role, which gets the lost instance's last
    snapshot before its app starts; then, in one transaction, the
    replacement becomes ACTIVE and the lost instance leaves the service
    (DELETING, no service: the sweep removes its container when the node
    returns, and no proxy plan counts it), and the proxies switch.  A lost
    home gives the service the first replacement's node as home.  A node
    that came back before the operation ran is left alone.
    """

    def __init__(self, cluster):
        super().__init__(cluster)
        self.snapshots = snapshots.Snapshots(cluster.conf)

    def recover(self, ctx):
        # A replacement switched in before the last attempt stopped is
        # past the point of no return: finish its switch first.
        self._finish_switched(ctx)
        super().recover(ctx)

    def run(self, ctx):
        sid = ctx.service_id
        if ctx.resumed:
            self.recover(ctx)
        self.set_state(sid, "ADAPTING")
        lost = [n for n in sorted(ctx.params["nodes"]) if not self._answers(n)]
        with session_scope() as s:
            svc = s.get(models.Service, sid)
            home = svc.home_node
            todo = [(i.id, i.node_name) for i in svc.instances
                    if i.state == "ACTIVE" and i.node_name in lost]
        for n, (old_id, node) in enumerate(todo, 1):
            home = self._replace(ctx, sid, old_id, node, lost, home, n, len(todo))
        notes = [_restored_note(r) for r in ctx.journal.get("restored", [])]
        back = sorted(set(ctx.params["nodes"]) - set(lost))
        if back:
            notes.append("back before being re-placed, left alone: " + ", ".join(back))
        if notes:
            ctx.record(note="done; " + "; ".join(notes))
        self.cluster.notify_peers(sid)
        self.set_state(sid, "RUNNING")
        self.finish(ctx)

    def _answers(self, node):
        """Whether a node reported lost is back: heartbeating and its agent
        answering."""
        with session_scope() as s:
            up = {n.name: self.cluster.ref(n) for n in self.cluster.nodes(s, up_only=True)}
        return node in up and nodeloss.agent_error(up[node]) is None

    def _target(self, old_id, home, lost):
        try:
            with session_scope() as s:
                return self.services.place(s, 1, home, exclude=lost)[0]
        except exception.InsufficientCapacity:
            raise exception.InsufficientCapacity(
                "instance %s was lost with node %s and cannot be re-placed: no "
                "other up, schedulable node has a free instance slot; add or "
                "enable a node, or scale another service in (it is tried again "
                "after [manager] node_lost_grace), or delete this service" % (
                    old_id, ", ".join(lost))) from None

    def _replace(self, ctx, sid, old_id, node, lost, home, n, total):
        pct = 5 + 85 * (n - 1) // total
        step = "instance %d/%d (lost with %s): " % (n, total, node)
        target = self._target(old_id, home, lost)
        with session_scope() as s:
            role = s.get(models.Instance, old_id).role
        ctx.record(pair={"old": old_id, "new": None, "switched": False})
        ctx.progress(pct, step + "starting a held %s on %s" % (role, target))
        # Held until the snapshot is in: an app that reads its state when
        # it starts sees it.  The role is the lost instance's: a lost
        # master is replaced by a master.
        fill = self._fill(ctx, sid, old_id, pct + 40 // total, step)
        new_id = self.start_instance(ctx, sid, target, state_after="STANDBY",
                                     role=role, fill=fill)
        new_home = target if home in lost else home

        def leave(s):
            # The lost instance leaves the service: no plan counts it.
            s.get(models.Instance, old_id).service_id = None
            s.get(models.Service, sid).home_node = new_home
        self.commit(ctx, {new_id: "ACTIVE", old_id: "DELETING"}, also=leave,
                    pair={"old": old_id, "new": new_id, "switched": True})
        ctx.progress(pct + 80 // total, step + "switching the proxies to %s" % target)
        self._finish_switched(ctx)
        return new_home

    def _fill(self, ctx, sid, old_id, pct, step):
        """The held start's ``fill``: the lost instance's last snapshot
        goes into its replacement before the replacement's app starts."""
        def fill(ref, new_id):
            ctx.record(pair=dict(ctx.journal["pair"], new=new_id))
            ctx.progress(pct, step + "putting the last snapshot of %s into "
                         "the held %s" % (old_id, new_id))
            data, meta = self.snapshots.archive(sid, old_id)
            if data is not None and base.FEATURE_STATE_EXPORT not in self.driver.features:
                LOG.warning("driver %s cannot import state: replacement %s of %s "
                            "starts with an empty state directory",
                            self.driver.name, new_id, old_id)
                data = meta = None
            if data is None:
                LOG.warning("instance %s had no snapshot: its replacement %s "
                            "starts with an empty state directory", old_id, new_id)
            else:
                self.driver.import_state(ref, new_id, data)
            # One entry per lost instance: a resumed heal that replaces it
            # again says what the replacement that stayed started with.
            ctx.record(restored=[r for r in ctx.journal.get("restored", [])
                                 if r["lost"] != old_id] + [{
                "lost": old_id, "new": new_id,
                "snapshot_taken_at": meta and meta["taken_at"],
                "bytes": meta and meta["bytes"]}])
        return fill

    def _finish_switched(self, ctx):
        """After a switch: proxies, and the snapshot goes to the new
        instance.  A proxy that cannot be reached (the lost node itself, if
        it still heartbeats) gets its plan from the sweep later."""
        pair = ctx.journal.get("pair")
        if not pair or not pair.get("switched"):
            return
        try:
            self.cluster.push_proxies()
        except exception.NodeError as e:
            LOG.warning("heal of %s: %s", ctx.service_id, e.message)
        self.snapshots.move(ctx.service_id, pair["old"], pair["new"])
        ctx.record(pair=None)

    def rollback(self, ctx, message):
        sid = ctx.service_id
        self.best_effort(
            lambda: self._finish_switched(ctx),
            lambda: self.cleanup_unfinished(ctx, sid),
            lambda: self.set_state(sid, "RUNNING", message))


class Sweeper(Workflow):
    """The periodic sweep: what no running operation accounts for."""

    def sweep(self):
        with session_scope() as s:
            engine.release_ended(s)
            leftovers = engine.leftovers(s)
            draining = s.scalars(
                select(models.Instance.id).join(models.Service).where(
                    models.Instance.state == "DELETING",
                    models.Service.operation_id.is_not(None))).all()
        removed = []
        for iid in leftovers:
            try:
                if self.destroy_instance(iid):
                    removed.append(iid)
            except exception.NodeError as e:
                LOG.warning("sweep: instance %s: %s", iid, e.message)
        removed += self.cluster.sweep_orphans()
        try:
            self.cluster.push_proxies(draining=draining)
        except exception.NodeError as e:
            LOG.warning("sweep: %s", e.message)
        return removed


def all_workflows(cluster):
    from mec_conpaas.manager import qosflows
    return {**qosflows.workflows_for(cluster),
            "create": CreateService(cluster), "scale": ScaleService(cluster),
            "migrate": MigrateService(cluster), "drain": MigrateService(cluster),
            "stop": StopService(cluster), "start": StartService(cluster),
            "delete": DeleteService(cluster), "heal": HealService(cluster)}
