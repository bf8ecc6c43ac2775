"""follow-the-user and ahead-of-handover: pure functions, no containers."""
from mec_conpaas.policies import ahead_handover
from mec_conpaas.policies import follow_user
from mec_conpaas.policies import placement
from mec_conpaas.policies import qos

TOPO = {"links": [("master", "ap-1", 1.0), ("ap-1", "ap-2", 2.0), ("ap-2", "ap-3", 2.0)]}
NODES = ["ap-1", "ap-2", "ap-3"]
DIST = placement.distances(TOPO, NODES)
KNOBS = {"priority": 0, "latency_objective_ms": 10.0, "max_users": 0,
         "min_instances": 1, "max_instances": 3, "min_dwell_s": 10.0,
         "min_gain": 0.2, "handover_probability": 0.5}
ADJ = {"ap-1": ["ap-2"], "ap-2": ["ap-1", "ap-3"], "ap-3": ["ap-2"]}


def capacity(**used):
    return {n: {"max_instances": 4, "used": used.get(n.replace("-", "_"), 0),
                "up": True, "schedulable": True} for n in NODES}


def svc(home="ap-1", instances=("ap-1",), busy=False, last_move=None):
    return {"name": "s", "home": home, "instances": list(instances), "busy": busy,
            "last_move": last_move}


def test_users_settled_elsewhere_make_the_service_migrate():
    users = [{"user": "u1", "ap": "ap-2", "since": 0.0}]
    d = follow_user.decide(svc(), users, DIST, capacity(ap_1=1), KNOBS, now=20.0)
    assert d["action"] == "migrate" and d["to"] == "ap-2"
    assert "follow-the-user" in d["reason"] and "ap-2" in d["reason"]


def test_users_at_home_keep_it():
    users = [{"user": "u1", "ap": "ap-1", "since": 0.0}]
    assert follow_user.decide(svc(), users, DIST, capacity(ap_1=1), KNOBS, 20.0) is None


def test_hysteresis_user_dwell_and_service_dwell():
    users = [{"user": "u1", "ap": "ap-2", "since": 15.0}]
    # The user arrived 5 s ago: not yet "there".
    assert follow_user.decide(svc(), users, DIST, capacity(ap_1=1), KNOBS, 20.0) is None
    users = [{"user": "u1", "ap": "ap-2", "since": 0.0}]
    # The service moved 3 s ago: it stays.
    assert follow_user.decide(svc(last_move=17.0), users, DIST, capacity(ap_1=1),
                              KNOBS, 20.0) is None


def test_busy_service_is_left_alone():
    users = [{"user": "u1", "ap": "ap-2", "since": 0.0}]
    assert follow_user.decide(svc(busy=True), users, DIST, capacity(), KNOBS, 20.0) is None


def test_split_users_need_the_minimum_gain():
    # Two users at ap-1, one at ap-2: moving would not pay.
    users = [{"user": "a", "ap": "ap-1", "since": 0.0},
             {"user": "b", "ap": "ap-1", "since": 0.0},
             {"user": "c", "ap": "ap-2", "since": 0.0}]
    assert follow_user.decide(svc(), users, DIST, capacity(ap_1=1), KNOBS, 20.0) is None


def test_cost_is_inverse_in_remaining_capacity():
    # Users between ap-2 and ap-3: equal latency to both; ap-2 nearly full.
    users = [{"user": "a", "ap": "ap-2", "since": 0.0},
             {"user": "b", "ap": "ap-3", "since": 0.0}]
    d = follow_user.decide(svc(), users, DIST, capacity(ap_1=1, ap_2=3), KNOBS, 20.0)
    assert d["to"] == "ap-3"
    assert follow_user.cost(users, "ap-2", DIST, capacity(ap_2=4), ["ap-1"]) == \
        float("inf")


def test_latency_threshold_excludes_far_nodes_with_room():
    users = [{"user": "a", "ap": "ap-3", "since": 0.0}]
    knobs = dict(KNOBS, latency_objective_ms=1.0)
    # ap-3 is full: ap-2 (2 ms) is over the objective, so with none under it
    # the cheapest of all is taken rather than nothing.
    cap = capacity(ap_1=1, ap_3=4)
    d = follow_user.decide(svc(), [dict(a) for a in users], DIST, cap, knobs, 20.0)
    assert d["to"] == "ap-2"


def test_a_standby_where_the_users_are_does_not_stop_the_home_moving():
    users = [{"user": "u1", "ap": "ap-2", "since": 0.0}]
    d = follow_user.decide(svc(instances=("ap-1", "ap-2")), users, DIST,
                           capacity(ap_1=1, ap_2=1), KNOBS, 20.0)
    assert d == {"action": "migrate", "to": "ap-2", "reason": d["reason"]}


def test_oscillating_user_moves_the_service_at_most_once_per_dwell():
    """A user flipping ap-1 <-> ap-2 every 4 s for a minute, the policy run
    every second with the manager's bookkeeping: migrations never come
    closer than the dwell time, and never more than the handovers."""
    home, last_move, moves, handovers = "ap-1", None, [], 0
    ap, since = "ap-1", 0.0
    for t in range(60):
        want = "ap-2" if (t // 4) % 2 else "ap-1"
        if want != ap:
            ap, since, handovers = want, float(t), handovers + 1
        d = follow_user.decide(svc(home=home, instances=(home,), last_move=last_move),
                               [{"user": "u", "ap": ap, "since": since}], DIST,
                               capacity(**{home.replace("-", "_"): 1}), KNOBS, float(t))
        if d:
            home, last_move = d["to"], float(t)
            moves.append(t)
    assert moves == [] and handovers > 10
    # Now the user stays at ap-2: exactly one migration, after the dwell.
    d = follow_user.decide(svc(home="ap-1"), [{"user": "u", "ap": "ap-2", "since": 60.0}],
                           DIST, capacity(ap_1=1), KNOBS, 70.0)
    assert d["to"] == "ap-2"


def test_qos_knobs_default_from_config_and_spec_overrides(conf):
    k = qos.knobs(conf)
    assert k["latency_objective_ms"] == conf.policies.latency_objective_ms
    assert k["min_dwell_s"] == conf.policies.min_dwell

    class Svc:
        qos = {"latency_objective_ms": 3.0}
        max_instances = 5
    k = qos.knobs(conf, Svc())
    assert k["latency_objective_ms"] == 3.0 and k["max_instances"] == 5
    assert k["priority"] == conf.policies.priority


def test_walking_on_is_predicted_going_back_less():
    assert ahead_handover.predict(None, "ap-1", {}, ADJ) == ("ap-2", 1.0)
    nxt, p = ahead_handover.predict("ap-1", "ap-2", {}, ADJ)
    assert nxt == "ap-3" and p == 1.0 / 1.25


def test_history_outweighs_adjacency():
    h = {}
    for _ in range(3):
        ahead_handover.record(h, "ap-1", "ap-2", "ap-1")
    nxt, p = ahead_handover.predict("ap-1", "ap-2", h, ADJ)
    assert nxt == "ap-1" and p > 0.5


def test_standby_starts_where_predicted_and_goes_when_it_no_longer_holds():
    s = {"name": "s", "home": "ap-1", "instances": ["ap-1"], "standbys": [],
         "busy": False}
    users = [{"user": "u1", "ap": "ap-1", "previous": None}]
    d = ahead_handover.decide(s, users, {}, ADJ, KNOBS)
    assert [(x["action"], x["node"]) for x in d] == [("standby", "ap-2")]
    assert "u1" in d[0]["reason"]
    # Standby running; the prediction still holds: nothing to do.
    s = dict(s, instances=["ap-1", "ap-2"], standbys=["ap-2"])
    assert ahead_handover.decide(s, users, {}, ADJ, KNOBS) == []
    # The user turns out to go to ap-0 from here: the prediction moves.
    h = {}
    for _ in range(10):
        ahead_handover.record(h, None, "ap-1", "ap-0")
    d = ahead_handover.decide(s, users, h, dict(ADJ, **{"ap-1": ["ap-2", "ap-0"]}),
                              KNOBS)
    assert [(x["action"], x["node"]) for x in d] == [("drop_standby", "ap-2"),
                                                     ("standby", "ap-0")]
    # The user left: no one predicted anywhere, the standby goes.
    assert [x["action"] for x in ahead_handover.decide(s, [], {}, ADJ, KNOBS)] == \
        ["drop_standby"]


def test_standby_kept_while_its_user_is_there_and_capped_by_max_instances():
    s = {"name": "s", "home": "ap-1", "instances": ["ap-1", "ap-2"],
         "standbys": ["ap-2"], "busy": False}
    users = [{"user": "u1", "ap": "ap-2", "previous": "ap-1"}]
    d = ahead_handover.decide(s, users, {}, ADJ, dict(KNOBS, max_instances=2))
    assert d == []
    d = ahead_handover.decide(s, users, {}, ADJ, KNOBS)
    assert [(x["action"], x["node"]) for x in d] == [("standby", "ap-3")]
