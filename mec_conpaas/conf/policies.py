from oslo_config import cfg

policies_group = cfg.OptGroup("policies", title="Mobility policies (follow-the-user, "
                                                "ahead-of-handover)")

policies_opts = [
    cfg.BoolOpt("follow_the_user", default=False,
                help="""
Run the follow-the-user policy in the manager's mobility loop.

Possible values:
* ``true``: a service whose users concentrate at another access point is
  migrated there (or its replica there kept and the far one removed);
* ``false``: services stay where they were placed.
"""),
    cfg.BoolOpt("ahead_of_handover", default=False,
                help="""
Run the ahead-of-handover policy: start a standby instance at the access
point a user will likely move to next, removed when the prediction no longer
holds.

Related options:
* ``handover_probability``, ``max_instances``.
"""),
    cfg.FloatOpt("interval", default=1.0, min=0.1,
                 help="Seconds between two rounds of the mobility loop."),
    cfg.FloatOpt("latency_objective_ms", default=10.0, min=0.0,
                 help="""
Default latency objective of a service (one way, ms, user's access point to
the instance): follow-the-user never chooses a node farther from the
service's users than this while a nearer one has room (seed 002's latency
threshold).  The service's QoS spec overrides it.
"""),
    cfg.IntOpt("max_users", default=0, min=0,
               help="Default most users per instance (0: no limit)."),
    cfg.IntOpt("priority", default=0,
               help="Default service priority (higher first)."),
    cfg.IntOpt("min_instances", default=1, min=0,
               help="Default fewest instances a policy may leave a service with."),
    cfg.IntOpt("max_instances", default=3, min=1,
               help="""
Default most instances a policy may give a service (its instances plus
standbys): a standby is not started above it.
"""),
    cfg.FloatOpt("min_dwell", default=10.0, min=0.0,
                 help="""
Hysteresis: seconds a service stays where a policy moved it before
follow-the-user may move it again, and seconds a user must have been at an
access point before it counts as being there.  Raising it trades reaction
time for fewer migrations on oscillating users.
"""),
    cfg.FloatOpt("min_gain", default=0.2, min=0.0, max=1.0,
                 help="""
Hysteresis: the smallest relative cost reduction (0.2: 20 %) for which
follow-the-user moves a service.
"""),
    cfg.FloatOpt("handover_probability", default=0.5, min=0.0, max=1.0,
                 help="""
Smallest predicted probability of a user's next access point for which
ahead-of-handover starts a standby there.
"""),
    cfg.BoolOpt("offload_for_objective", default=True,
                help="""
Offload to a cloud node (a topology node of kind cloud) the services whose
own latency objective the cloud meets, to make room at an access point for
a service on the cloud that needs the edge (its users are there and the
cloud misses its objective, or it sets none).  Only services whose priority
is not above the needy one's move.  Possible values: true, false (services
go to the cloud only when no access point has room).  Related options:
offload_margin.
"""),
    cfg.FloatOpt("offload_margin", default=0.25, min=0.0, max=0.9,
                 help="""
Headroom kept when judging that a cloud node meets a service's latency
objective: the latency predicted for its users there (round trips over the
Wi-Fi hop and the backbone plus its measured computing latency) must be at
most (1 - offload_margin) x the objective.  Possible values: 0.0 to 0.9
(0.25: a quarter of the objective spare).  Related options:
offload_for_objective.
"""),
    cfg.FloatOpt("user_idle_timeout", default=30.0, min=1.0,
                 help="""
Seconds after a user's last request to a service during which the user still
counts as that service's user (from the access points' HAProxy stick
tables).
"""),
]


def register_opts(conf):
    conf.register_group(policies_group)
    conf.register_opts(policies_opts, group=policies_group)


def list_opts():
    return {policies_group: policies_opts}
