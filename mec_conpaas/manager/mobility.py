"""The manager's mobility loop: where users are, and the policies that
follow them.

Each round reads what the node agents last reported (``stations``: the
users attached to each access point; ``services``: per service, the source
addresses that sent to it lately, from HAProxy's stick tables), keeps
where each user is, came from and since when (the handover history
ahead-of-handover predicts from), runs the pure policies
(policies/follow_user.py, policies/ahead_handover.py) and turns their
decisions into ordinary operations (``migrate``, ``scale``) whose params
carry the policy's ``reason``: they show in ``operation list`` and exclude
the tenant's own operations like any other.

What it keeps is persisted (db/models.py ``Mobility*``), written in the
session that observed or decided it, and read back by a restarted
manager: where each user is, came from and since when (so dwell times run
on across a restart), the handover counts the prediction learns from,
when the loop last moved each service (its dwell), and the standbys it
started: a standby row is written in the same transaction as its scale
operation, so after a crash at any point the loop still knows the
instance is its standby, keeps it while the prediction holds and drops
it when it no longer does (none leaks as a serving instance).
"""
import logging
import threading
import time

from sqlalchemy import delete
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.policies import ahead_handover
from mec_conpaas.policies import follow_user
from mec_conpaas.policies import qos

LOG = logging.getLogger(__name__)


class Mobility:

    def __init__(self, cluster, services, engine, clock=time.time):
        self.cluster = cluster
        self.services = services
        self.engine = engine
        self.conf = cluster.conf
        self.clock = clock
        self.lock = threading.Lock()
        # Read from the store at first use (_load), written through.
        self.users = {}      # user -> {"ap", "since", "previous", "address", ...}
        self.history = {}    # ahead_handover.record's
        self.standbys = {}   # service id -> {node: started at}
        self.last_move = {}  # service id -> when this loop last migrated it
        self.loaded = False

    # -- the store -----------------------------------------------------------
    def _load(self, s):
        """What a previous manager process kept (once per process; the
        caller holds ``self.lock``)."""
        if self.loaded:
            return
        for u in s.scalars(select(models.MobilityUser)):
            self.users[u.user] = {"user": u.user, "ap": u.ap, "since": u.since,
                                  "previous": u.previous, "address": u.address,
                                  "mac": u.mac, "signal": u.signal}
        for t in s.scalars(select(models.MobilityTransition)):
            key = "first" if t.order == 1 else "second"
            self.history.setdefault(key, {}).setdefault(t.origin, {})[t.next] = t.count
        for sb in s.scalars(select(models.MobilityStandby)):
            self.standbys.setdefault(sb.service_id, {})[sb.node] = sb.started_at
        for m in s.scalars(select(models.MobilityMove)):
            self.last_move[m.service_id] = m.at
        self.loaded = True
        if self.users or self.standbys:
            LOG.info("mobility state restored: %d user(s), %d standby(s)",
                     len(self.users), sum(map(len, self.standbys.values())))

    def _save_user(self, s, u):
        s.merge(models.MobilityUser(
            user=u["user"], ap=u["ap"], previous=u["previous"], since=u["since"],
            address=u.get("address"), mac=u.get("mac"), signal=u.get("signal")))

    def _save_transition(self, s, previous, current, nxt):
        rows = [(1, current)] + ([(2, "%s>%s" % (previous, current))]
                                 if previous is not None else [])
        for order, origin in rows:
            key = "first" if order == 1 else "second"
            s.merge(models.MobilityTransition(
                order=order, origin=origin, next=nxt,
                count=self.history[key][origin][nxt]))

    def _forget_standby(self, s, service_id, node):
        self.standbys.get(service_id, {}).pop(node, None)
        s.execute(delete(models.MobilityStandby).where(
            models.MobilityStandby.service_id == service_id,
            models.MobilityStandby.node == node))

    def _forget_services(self, s, gone):
        """Rows of services that no longer exist."""
        for sid in gone:
            self.standbys.pop(sid, None)
            self.last_move.pop(sid, None)
        if gone:
            s.execute(delete(models.MobilityStandby).where(
                models.MobilityStandby.service_id.in_(gone)))
            s.execute(delete(models.MobilityMove).where(
                models.MobilityMove.service_id.in_(gone)))

    # -- observing -----------------------------------------------------------
    def observe(self, session):
        """Update where every user is from the up nodes' last reports;
        returns the up nodes."""
        now = self.clock()
        nodes = self.cluster.up_nodes(session)  # every second: not the rows
        seen = {}
        for node in nodes:
            for st in (node.report or {}).get("stations") or ():
                user = st.get("user") or st.get("mac")
                # Seen at two APs (a report not yet refreshed after a move):
                # the later attachment wins.
                if user and (user not in seen or st.get("since", 0) >
                             seen[user][1].get("since", 0)):
                    seen[user] = (node.name, st)
        with self.lock:
            self._load(session)
            for user, (ap, st) in seen.items():
                known = self.users.get(user)
                changed = False
                if known is None or known["ap"] != ap:
                    previous = known["ap"] if known else None
                    if known is not None:
                        ahead_handover.record(self.history, known.get("previous"),
                                              known["ap"], ap)
                        self._save_transition(session, known.get("previous"),
                                              known["ap"], ap)
                        LOG.info("user %s moved %s -> %s", user, known["ap"], ap)
                    known = self.users[user] = {"user": user, "ap": ap, "since": now,
                                                "previous": previous}
                    changed = True
                fresh = {"address": st.get("address"), "mac": st.get("mac"),
                         "signal": st.get("signal")}
                if changed or any(known.get(k) != v for k, v in fresh.items()):
                    known.update(fresh)
                    self._save_user(session, known)
            # A user is gone when the AP it was at reports without it; the
            # users of an AP not heard lately (down, or all of them just
            # after a manager restart) stay where they were: unknown is not
            # gone, and dropping them would drop their standbys.
            up = {n.name for n in nodes}
            gone = {u for u in set(self.users) - set(seen) if self.users[u]["ap"] in up}
            for user in gone:
                LOG.info("user %s detached from %s", user, self.users[user]["ap"])
                del self.users[user]
            if gone:
                session.execute(delete(models.MobilityUser).where(
                    models.MobilityUser.user.in_(gone)))
        return nodes

    def service_users(self, nodes, service_id):
        """The users that sent to the service lately (by source address),
        with where they are now."""
        idle_max = self.conf.policies.user_idle_timeout
        addresses = set()
        for node in nodes:
            seen = ((node.report or {}).get("services") or {}).get(service_id) or {}
            for addr, idle in (seen.get("users") or {}).items():
                if idle is None or idle <= idle_max:
                    addresses.add(addr)
        with self.lock:
            return [dict(u) for u in self.users.values()
                    if u.get("address") in addresses]

    def view(self, session):
        """Every user the APs report, for ``user list``: where, since, the
        AP before, signal and the services (names) it used lately."""
        nodes = self.observe(session)
        used = {}
        svcs = {s.id: s.name for s in session.scalars(select(models.Service))}
        for node in nodes:
            for sid, seen in ((node.report or {}).get("services") or {}).items():
                for addr in (seen.get("users") or {}):
                    used.setdefault(addr, set()).add(svcs.get(sid, sid))
        now = self.clock()
        with self.lock:
            return [{"name": u["user"], "ap": u["ap"], "previous": u["previous"],
                     "attached_for_s": round(now - u["since"], 1),
                     "address": u.get("address"), "mac": u.get("mac"),
                     "signal": u.get("signal"),
                     "services": sorted(used.get(u.get("address"), ()))}
                    for u in sorted(self.users.values(), key=lambda u: u["user"])]

    # -- deciding ------------------------------------------------------------
    def round(self):
        """One pass of the enabled policies; returns the operation ids it
        started."""
        opts = self.conf.policies
        started = []
        with session_scope() as s:
            nodes = self.observe(s)
            if not (opts.follow_the_user or opts.ahead_of_handover):
                return started
            up = {n.name for n in nodes}
            capacity = self.cluster.capacity(s)
            dist = self.cluster.distances(list(capacity))
            adjacency = self._adjacency(list(capacity))
            now = self.clock()
            with self.lock:
                existing = set(s.scalars(select(models.Service.id)))
                self._forget_services(s, (set(self.standbys) | set(self.last_move))
                                      - existing)
            for svc in s.scalars(select(models.Service).where(
                    models.Service.state == "RUNNING")):
                active = [i.node_name for i in svc.instances if i.state == "ACTIVE"]
                mine = self.standbys.setdefault(svc.id, {})
                if svc.operation_id:
                    continue  # its standby may still be starting
                if not {svc.home_node, *active} <= up:
                    continue  # a node of its own not heard: its users unknown
                for node in [n for n in mine if n not in active]:
                    # gone (failed, scaled in by its owner)
                    self._forget_standby(s, svc.id, node)
                users = self.service_users(nodes, svc.id)
                knobs = qos.knobs(self.conf, svc)
                decisions = []
                if opts.follow_the_user:
                    d = follow_user.decide(
                        {"name": svc.name, "home": svc.home_node, "instances": active,
                         "busy": False, "last_move": self.last_move.get(svc.id)},
                        users, dist, capacity, knobs, now)
                    decisions += [d] if d else []
                if opts.ahead_of_handover and not decisions:
                    if svc.home_node in mine:  # a migration made it the home's
                        decisions.append({
                            "action": "drop_standby", "node": svc.home_node,
                            "reason": "ahead-of-handover: the standby at %s is "
                                      "redundant now the service moved there"
                                      % svc.home_node})
                    else:
                        decisions += ahead_handover.decide(
                            {"name": svc.name, "home": svc.home_node,
                             "instances": active, "standbys": list(mine),
                             "busy": False},
                            users, self.history, adjacency, knobs)
                if decisions:
                    op_id = self._apply(s, svc, active, decisions[0], now)
                    if op_id:
                        started.append(op_id)
        for op_id in started:
            self.engine.submit(op_id)
        return started

    def _adjacency(self, names):
        adj = {n: [] for n in names}
        for a, b, _ms in (self.cluster.topology or {}).get("links", []):
            if a in adj and b in adj:
                adj[a].append(b)
                adj[b].append(a)
        return adj

    def _apply(self, s, svc, active, d, now):
        """Start the operation a decision asks for; None if the service layer
        refuses (no room, say): the next round decides again."""
        try:
            if d["action"] == "migrate":
                self.services.check_migrate(s, svc, d["to"])
                op = self.services.start(s, "migrate", svc, "ADAPTING", ("RUNNING",),
                                         "migrated", to=d["to"], source=svc.home_node,
                                         reason=d["reason"])
                self.last_move[svc.id] = now
                s.merge(models.MobilityMove(service_id=svc.id, at=now))
            elif d["action"] == "standby":
                count = len(active) + 1
                self.services.check_scale(s, svc, count, d["node"])
                op = self.services.start(s, "scale", svc, "ADAPTING", ("RUNNING",),
                                         "scaled", count=count, previous=len(active),
                                         node=d["node"], standby=True,
                                         reason=d["reason"])
                self.standbys.setdefault(svc.id, {})[d["node"]] = now
                s.merge(models.MobilityStandby(service_id=svc.id, node=d["node"],
                                               started_at=now))
            elif d["action"] == "drop_standby":
                op = self.services.start(s, "scale", svc, "ADAPTING", ("RUNNING",),
                                         "scaled", count=len(active) - 1,
                                         previous=len(active), remove_from=[d["node"]],
                                         reason=d["reason"])
                self._forget_standby(s, svc.id, d["node"])
            else:
                raise ValueError("unknown policy action %r" % d["action"])
        except exception.MecError as e:
            LOG.info("%s for %s not started: %s", d["action"], svc.name, e.message)
            return None
        LOG.info("%s %s: %s (operation %s)", d["action"], svc.name, d["reason"], op.id)
        return op.id

    def loop(self, stop):
        while not stop.wait(self.conf.policies.interval):
            try:
                self.round()
            except Exception:
                LOG.exception("mobility round")
