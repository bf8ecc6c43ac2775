"""Liveness datagrams (the cheap heartbeat path) on a real store and real
UDP sockets on loopback: only a datagram signed with the node's own
credential, newer than the last and sent within the window marks a node
alive; forged and replayed ones do not."""
import datetime
import threading
import time

import pytest

from mec_conpaas import liveness as wire
from mec_conpaas.agents.node import liveness as agent_side
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import join
from mec_conpaas.manager import liveness


class Clock:
    now = 1_700_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def nodes(store):
    """Two registered nodes with their own credentials, last heard 1 s ago."""
    clock = Clock()
    creds = {}
    with db.session_scope() as s:
        for n in ("ap-1", "ap-2"):
            s.add(models.Node(id=n, name=n, hostname=n, mac="02:00:00:00:00:01",
                              address="10.0.0.1", agent_port=9681, agent_token="x",
                              max_instances=3, report={},
                              last_heartbeat=liveness.to_db_time(clock.now - 1)))
            creds[n] = join.issue_credential(s, n)
    live = liveness.Liveness(store, clock=clock)
    live.reload()
    return live, clock, creds


def last_heartbeat(node):
    with db.session_scope() as s:
        return liveness.from_db_time(s.get(models.Node, node).last_heartbeat)


def beat(cred, node, seq, sent):
    return wire.beat(wire.key(cred), node, seq, int(sent * 1e6))


def test_a_signed_fresh_beat_marks_the_node_alive_at_its_sent_time(nodes):
    live, clock, creds = nodes
    before = last_heartbeat("ap-1")
    reply = live.handle(beat(creds["ap-1"], "ap-1", 1, clock.now - 0.2))
    assert wire.read_ack(wire.key(creds["ap-1"]), "ap-1", reply) == (1, wire.OK)
    assert live.flush() == 1
    assert last_heartbeat("ap-1") == pytest.approx(clock.now - 0.2, abs=1e-5)
    assert last_heartbeat("ap-2") == before  # only who was heard
    assert live.flush() == 0                 # nothing new: no write


def test_forged_and_replayed_beats_do_not_mark_a_node_alive(nodes):
    live, clock, creds = nodes
    before = last_heartbeat("ap-1")
    # Signed with another node's credential, or with a made-up one.
    assert live.handle(beat(creds["ap-2"], "ap-1", 5, clock.now)) is None
    assert live.handle(beat("guessed", "ap-1", 6, clock.now)) is None
    # A valid beat with its HMAC's last byte flipped.
    good = beat(creds["ap-1"], "ap-1", 7, clock.now)
    assert live.handle(good[:-1] + bytes([good[-1] ^ 1])) is None
    # Truncated, or of another protocol.
    assert live.handle(good[:-3]) is None and live.handle(b"GET / HTTP/1.0") is None
    # A node no credential was issued for.
    assert live.handle(beat("x", "ap-9", 1, clock.now)) is None
    assert live.flush() == 0 and last_heartbeat("ap-1") == before
    # The genuine one is taken once; sent again (a replay), it is not, nor
    # is an older one recorded earlier.
    older = beat(creds["ap-1"], "ap-1", 3, clock.now - 0.5)
    assert live.handle(good) is not None
    assert live.handle(good) is None and live.handle(older) is None
    assert live.counts["forged"] == 3 and live.counts["replayed"] == 2
    assert live.counts["accepted"] == 1
    assert live.flush() == 1 and last_heartbeat("ap-1") == pytest.approx(clock.now,
                                                                          abs=1e-5)


def test_a_replay_after_the_node_died_does_not_keep_it_alive(nodes, store):
    """A beat recorded while the node was alive and replayed later (after a
    manager restart, which forgets the sequence numbers): outside the window
    it is refused; and the node is never marked alive later than it sent."""
    live, clock, creds = nodes
    recorded = beat(creds["ap-1"], "ap-1", 10, clock.now)
    assert live.handle(recorded) is not None and live.flush() == 1
    clock.now += store.liveness.max_age + 1
    restarted = liveness.Liveness(store, clock=clock)
    restarted.reload()
    reply = restarted.handle(recorded)
    assert wire.read_ack(wire.key(creds["ap-1"]), "ap-1", reply) == (10, wire.FULL)
    assert restarted.flush() == 0
    assert last_heartbeat("ap-1") == pytest.approx(clock.now - store.liveness.max_age - 1,
                                                   abs=1e-5)


def test_a_down_node_must_send_its_full_report_first(nodes, store):
    live, clock, creds = nodes
    # Down for less than node_lost_grace (a manager restart): taken.
    clock.now += store.manager.node_heartbeat_timeout + 1
    reply = live.handle(beat(creds["ap-1"], "ap-1", 1, clock.now))
    assert wire.read_ack(wire.key(creds["ap-1"]), "ap-1", reply)[1] == wire.OK
    # Not heard for longer than that: lost, its full report first.
    clock.now += store.manager.node_lost_grace + 1
    reply = live.handle(beat(creds["ap-1"], "ap-1", 2, clock.now))
    assert wire.read_ack(wire.key(creds["ap-1"]), "ap-1", reply)[1] == wire.FULL
    assert live.flush() == 1  # only the first
    # Its HTTP heartbeat (which advertises the port) brings it back.
    live.sock = object()  # stands for the bound socket in advertise
    with pytest.raises(AttributeError):
        live.advertise("ap-1")  # getsockname: only a real socket will do
    live.alive_at["ap-1"] = clock.now
    reply = live.handle(beat(creds["ap-1"], "ap-1", 3, clock.now))
    assert wire.read_ack(wire.key(creds["ap-1"]), "ap-1", reply)[1] == wire.OK


def test_a_flush_never_moves_a_heartbeat_back(nodes):
    live, clock, creds = nodes
    assert live.handle(beat(creds["ap-1"], "ap-1", 1, clock.now - 0.5)) is not None
    with db.session_scope() as s:  # an HTTP heartbeat lands meanwhile
        s.get(models.Node, "ap-1").last_heartbeat = liveness.to_db_time(clock.now)
    live.flush()
    assert last_heartbeat("ap-1") == pytest.approx(clock.now, abs=1e-5)


def test_a_revoked_credential_stops_working_at_the_next_reload(nodes):
    live, clock, creds = nodes
    assert live.handle(beat(creds["ap-1"], "ap-1", 1, clock.now)) is not None
    with db.session_scope() as s:
        join.revoke_credentials(s, "ap-1")
    live.reload()
    assert live.handle(beat(creds["ap-1"], "ap-1", 2, clock.now)) is None


def test_agent_and_manager_over_real_udp(nodes, store):
    """The agent's beacon against the manager's socket on loopback: acked
    beats while the report keeps its shape; a changed report, a missing ack
    or the full-report interval send the full report over HTTP."""
    live, clock, creds = nodes
    store.set_override("bind_host", "127.0.0.1", group="api")
    store.set_override("port", 0, group="liveness")
    store.set_override("listen", True, group="liveness")
    stop = threading.Event()
    try:
        live.clock = time.time
        live.alive_at["ap-1"] = time.time()
        live.serve(stop)
        answer = live.advertise("ap-1")
        # Two nodes: the configured interval; a thousand: stretched so
        # they send 5 unchanged full reports a second together.
        assert answer["liveness"]["full_report_s"] == 10
        keys = live.keys
        live.keys = dict.fromkeys(range(1000), b"")
        assert live.advertise("ap-1")["liveness"]["full_report_s"] == 200
        live.keys = keys
        assert agent_side.full_interval(answer, store) == 10
        assert agent_side.full_interval({}, store) == 10
        store.set_override("manager_url", "http://127.0.0.1:1/", group="node_agent")
        beacon = agent_side.for_answer(None, answer, "ap-1", creds["ap-1"], store)
        report = {"stations": [{"mac": "02:aa:00:00:00:01", "user": "bob",
                                "address": "10.0.1.10"}],
                  "containers": {"i1": {"state": "RUNNING", "cpus": 0.5,
                                        "memory_mb": 64, "latency_ms": 3.1,
                                        "cpu_percent": 12.0}},
                  "cpu_percent": 20.0}
        shape = agent_side.fingerprint(report)
        beacon.synced(answer["liveness"]["clock"], time.time(), time.time(), shape)
        for k in range(3):
            # Usage moves (CPU, a latency inside its band): same shape.
            report["cpu_percent"] += 7
            report["containers"]["i1"]["latency_ms"] += 0.1
            shape = agent_side.fingerprint(report)
            assert not beacon.needs_full(shape, 30)
            beacon.beat()
            deadline = time.monotonic() + 5
            while live.counts["accepted"] < k + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(0.1)
        assert not beacon.needs_full(shape, 30) and beacon.last_ack is not None
        assert live.counts["accepted"] == 3
        assert live.flush() == 1
        assert last_heartbeat("ap-1") > time.time() - 2
        # A user arrived: the shape changed, the full report goes.
        report["stations"].append({"mac": "02:aa:00:00:00:02", "user": "eve",
                                   "address": "10.0.1.11"})
        assert beacon.needs_full(agent_side.fingerprint(report), 30)
        # A latency doubling (auto-scaling's input) changes it too.
        report["stations"].pop()
        report["containers"]["i1"]["latency_ms"] *= 2
        assert beacon.needs_full(agent_side.fingerprint(report), 30)
        report["containers"]["i1"]["latency_ms"] /= 2
        assert beacon.needs_full(agent_side.fingerprint(report), 0)  # interval due
        # An ack that comes late (after the next beat went) still counts.
        shape = agent_side.fingerprint(report)
        beacon.synced(time.time(), time.time(), time.time(), shape)
        beacon.pending = [beacon.seq]  # a beat whose ack was lost
        beacon.beat()
        deadline = time.monotonic() + 5
        while beacon.pending and time.monotonic() < deadline:
            beacon.needs_full(shape, 30)
            time.sleep(0.01)
        assert beacon.pending == [] and not beacon.needs_full(shape, 30)
        # The manager stops answering (its socket gone): after two beats
        # in a row without an ack the agent goes back to HTTP.
        stop.set()
        time.sleep(0.7)
        beacon.beat()
        time.sleep(0.1)
        assert not beacon.needs_full(shape, 30)
        beacon.beat()
        time.sleep(0.1)
        assert beacon.needs_full(shape, 30)
        beacon.close()
        # No port advertised (an older manager): no beacon.
        assert agent_side.for_answer(None, {"ok": True}, "ap-1", creds["ap-1"],
                                     store) is None
    finally:
        stop.set()
        store.clear_override("bind_host", group="api")
        store.clear_override("port", group="liveness")
        store.clear_override("listen", group="liveness")
        store.clear_override("manager_url", group="node_agent")


def test_time_conversions_round_trip():
    t = 1_700_000_000.123456
    assert liveness.from_db_time(liveness.to_db_time(t)) == pytest.approx(t, abs=1e-6)
    assert liveness.to_db_time(t).tzinfo is None and \
        liveness.to_db_time(t) - datetime.datetime(2023, 11, 14, 22, 13, 20) \
        < datetime.timedelta(seconds=1)


def test_a_taken_udp_port_leaves_heartbeats_on_http(nodes, store):
    """Another program on the port: the manager starts anyway, without
    datagrams (no port advertised: agents stay on HTTP)."""
    import socket
    live, clock, creds = nodes
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    store.set_override("bind_host", "127.0.0.1", group="api")
    store.set_override("port", taken.getsockname()[1], group="liveness")
    store.set_override("listen", True, group="liveness")
    try:
        live.serve(threading.Event())
        assert live.sock is None and live.advertise("ap-1") == {}
    finally:
        taken.close()
        store.clear_override("bind_host", group="api")
        store.clear_override("port", group="liveness")
        store.clear_override("listen", group="liveness")


def test_the_clock_offset_comes_from_the_shortest_round_trip(nodes, store):
    live, clock, creds = nodes
    store.set_override("manager_url", "http://127.0.0.1:1/", group="node_agent")
    try:
        b = agent_side.Beacon("ap-1", creds["ap-1"], "http://127.0.0.1:1/", 9)
        b.synced(1000.0, 0.0, 0.2, "s")        # 0.2 s round trip: offset ~999.9
        assert b.offset == pytest.approx(999.9)
        b.synced(1020.0, 10.0, 30.0, "s")      # 20 s in a queue: not taken
        assert b.offset == pytest.approx(999.9)
        b.synced(1040.05, 40.0, 40.1, "s")     # shorter: taken
        assert b.offset == pytest.approx(1000.0)
        b.close()
    finally:
        store.clear_override("manager_url", group="node_agent")


def test_the_receiver_process_acks_flushes_and_is_restarted(store):
    """The manager's receiver (its own process, off the API's GIL) on a real
    socket: a signed beat is acked and reaches the store; a forged one is
    not answered; a killed receiver is started again on the same port; the
    receiver ends with the manager's end of the socket pair."""
    import os
    import socket

    now = time.time()
    with db.session_scope() as s:
        s.add(models.Node(id="ap-1", name="ap-1", hostname="ap-1", mac="02:00:00:00:00:01",
                          address="10.0.0.1", agent_port=9681, agent_token="x",
                          max_instances=3, report={},
                          last_heartbeat=liveness.to_db_time(now - 1)))
        cred = join.issue_credential(s, "ap-1")
    store.set_override("bind_host", "127.0.0.1", group="api")
    store.set_override("port", 0, group="liveness")
    store.set_override("listen", True, group="liveness")
    stop = threading.Event()
    rx = liveness.Receiver(store)
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.settimeout(10)
    try:
        rx.serve(stop)

        def wait(what, cond, timeout=30):
            deadline = time.monotonic() + timeout
            while not cond():
                assert time.monotonic() < deadline, what
                time.sleep(0.05)
        wait("receiver up", lambda: rx.running)
        assert rx.proc.pid != os.getpid() and rx.nodes == 1
        port = rx.advertise("ap-1")["liveness"]["port"]
        assert port == rx.sock.getsockname()[1]
        seq = [0]

        def send(c=cred):
            seq[0] += 1
            agent.sendto(beat(c, "ap-1", seq[0], time.time()), ("127.0.0.1", port))
        send("forged")
        send()
        reply = agent.recv(256)  # the forged one got no answer: this is ours
        assert wire.read_ack(wire.key(cred), "ap-1", reply) == (seq[0], wire.OK)
        sent = time.time()
        wait("flushed", lambda: last_heartbeat("ap-1") >= sent - 0.5)
        wait("counts", lambda: rx.counts.get("accepted") == 1
             and rx.counts.get("forged") == 1)
        # Killed: started again, on the same socket.
        first = rx.proc
        rx.stop_receiver()
        wait("restarted", lambda: rx.proc is not first and rx.running)
        assert rx.starts == 2 and rx.advertise("ap-1")["liveness"]["port"] == port
        send()
        assert wire.read_ack(wire.key(cred), "ap-1", agent.recv(256))[1] == wire.OK
        # The manager goes: so does its receiver.
        proc = rx.proc
        stop.set()
        proc.wait(10)
    finally:
        stop.set()
        agent.close()
        if rx.proc is not None and rx.proc.poll() is None:
            rx.proc.kill()
            rx.proc.wait()
        store.clear_override("bind_host", group="api")
        store.clear_override("port", group="liveness")
        store.clear_override("listen", group="liveness")


def test_the_clock_offset_is_zero_when_the_round_trip_brackets_the_managers_clock(
        nodes, store):
    """Same clock (or NTP): a slow round trip must not shift every beat
    half of it into the past; a manager clock outside the round trip (an
    AP without a real-time clock) is still corrected for."""
    _live, _clock, creds = nodes
    store.set_override("manager_url", "http://127.0.0.1:1/", group="node_agent")
    try:
        b = agent_side.Beacon("ap-1", creds["ap-1"], "http://127.0.0.1:1/", 9)
        b.synced(1000.5, 1000.0, 1003.0, "s")  # answered 0.5 s into a 3 s trip
        assert b.offset == 0.0
        b.offset_rtt = None
        b.synced(5000.0, 1000.0, 1002.0, "s")  # an AP whose clock is far behind
        assert b.offset == pytest.approx(3999.0)
        b.close()
    finally:
        store.clear_override("manager_url", group="node_agent")


def test_last_heartbeat_is_written_at_most_once_per_resolution(nodes, store):
    """Beats closer together than a quarter of the heartbeat timeout are
    acked but not written again: the row stays well within the timeout and
    a 1,000-node fleet writes half the rows (or fewer)."""
    live, clock, creds = nodes
    assert live.resolution == store.manager.node_heartbeat_timeout / 4.0
    assert live.handle(beat(creds["ap-1"], "ap-1", 1, clock.now)) is not None
    assert live.flush() == 1
    written = last_heartbeat("ap-1")
    clock.now += live.resolution / 2
    reply = live.handle(beat(creds["ap-1"], "ap-1", 2, clock.now))
    assert wire.read_ack(wire.key(creds["ap-1"]), "ap-1", reply) == (2, wire.OK)
    assert live.flush() == 0 and last_heartbeat("ap-1") == written
    clock.now += live.resolution / 2
    assert live.handle(beat(creds["ap-1"], "ap-1", 3, clock.now)) is not None
    assert live.flush() == 1
    assert last_heartbeat("ap-1") == pytest.approx(clock.now, abs=1e-5)


def test_one_wake_up_takes_and_answers_every_waiting_datagram(nodes):
    """The receiver sleeps between two drains of its socket (one wake-up
    for many datagrams): one drain checks every datagram waiting, answers
    each genuine one with its own ack (to its own sender) and the forged
    one with nothing, and stops at an empty socket instead of blocking."""
    import socket
    live, clock, creds = nodes
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    agents = {n: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for n in creds}
    try:
        for n, sock in agents.items():
            sock.settimeout(5)
            for seq in (1, 2):
                sock.sendto(beat(creds[n], n, seq, clock.now), rx.getsockname())
        agents["ap-1"].sendto(beat(creds["ap-2"], "ap-1", 3, clock.now),
                              rx.getsockname())
        deadline = time.monotonic() + 5
        taken = 0
        while taken < 5 and time.monotonic() < deadline:  # loopback: at once
            taken += live.drain(rx)
        assert taken == 5 and live.drain(rx) == 0
        for n, sock in agents.items():
            acks = [wire.read_ack(wire.key(creds[n]), n, sock.recv(256)) for _ in (1, 2)]
            assert acks == [(1, wire.OK), (2, wire.OK)]
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):  # the forged one: no answer
                sock.recv(256)
        assert live.counts["accepted"] == 4 and live.counts["forged"] == 1
        assert live.flush() == 2
    finally:
        rx.close()
        for sock in agents.values():
            sock.close()


def test_the_periodic_reload_rebuilds_keys_only_when_they_changed(nodes):
    """Every RELOAD_S the keys are read, and rebuilt only if a credential
    changed; the nodes' times only with ``beats`` (every BEATS_RELOAD_S)."""
    live, clock, creds = nodes
    keys = live.keys
    with db.session_scope() as s:  # an HTTP heartbeat's time, written later
        s.get(models.Node, "ap-1").last_heartbeat = liveness.to_db_time(clock.now + 3)
    live.reload(beats=False)
    assert live.keys is keys and live.alive_at["ap-1"] < clock.now + 3
    with db.session_scope() as s:
        join.revoke_credentials(s, "ap-2")
    live.reload(beats=False)
    assert set(live.keys) == {"ap-1"} and live.keys["ap-1"] == keys["ap-1"]
    live.reload()
    assert live.alive_at["ap-1"] == pytest.approx(clock.now + 3, abs=1e-5)
