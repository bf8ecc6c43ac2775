from oslo_config import cfg

liveness_group = cfg.OptGroup("liveness", title="Liveness datagrams (the cheap "
                                                "heartbeat path)")

liveness_opts = [
    cfg.BoolOpt("enabled", default=True,
                help="""
Let node agents say they are alive with a signed UDP datagram instead of an
HTTP heartbeat when their report has not changed.

A datagram costs the manager tens of microseconds where an HTTP heartbeat
costs milliseconds, which is what lets one manager keep 1,000 nodes at one
heartbeat each 2 s (README, "Control-plane scale").  The full report still
goes over HTTP when it changed and every ``full_report_interval``.

Possible values:
* ``true`` (manager): listen for datagrams and advertise the port in each
  heartbeat answer; (node agent): use it when the manager advertises it;
* ``false``: HTTP heartbeats only (what agents and managers of before this
  option do; each side works with the other either way).

Related options:
* ``port``, ``full_report_interval``, ``max_age``.
"""),
    cfg.BoolOpt("listen", default=True,
                help="""
(Manager) Receive liveness datagrams (and advertise the port to agents).

The datagrams are received by a process of the manager's own (not a thread
behind its API's GIL) that writes last-seen times to the store in batches
(README, "Heartbeats").

Possible values:
* ``true``: listen on ``port``; agents with ``enabled`` use it;
* ``false``: HTTP heartbeats only (e.g. where UDP to the manager is
  filtered; agents notice anyway, after two beats without an ack).
"""),
    cfg.PortOpt("port",
                help="""
UDP port the manager receives liveness datagrams on.

Possible values:
* unset: the same number as ``[api] bind_port`` (UDP and TCP ports are
  distinct, so nothing else needs to change on a firewall that allows the
  API but for UDP);
* a port number.
"""),
    cfg.IntOpt("max_age", default=5, min=1,
               help="""
Seconds a datagram may be older (or newer) than the manager's clock.

A datagram carries the time it was sent on the manager's clock (the agent
learns the offset from each HTTP heartbeat answer), a sequence number and an
HMAC under the node's own credential: a forged one is dropped, a replayed
one older than the last accepted is dropped, and a datagram can only ever
vouch that the node was alive when it was sent.  Keep this below
``[manager] node_heartbeat_timeout``.
"""),
    cfg.FloatOpt("flush_interval", default=0.5, min=0.05,
                 help="""
Seconds between two writes of the in-memory last-seen table to the store
(one batched UPDATE for every node heard since the last write).
"""),
    cfg.IntOpt("full_report_interval", default=10, min=0,
               help="""
Seconds after which a node's full report goes over HTTP even when nothing in
it changed (usage figures are refreshed then).

A report changes, and goes at once, when its stations, the users of a
service, its containers, their sizes or a container's latency band
change.  The manager advertises the interval its agents use: this value,
or longer where its nodes would otherwise send more than
``full_reports_per_second`` (at 1,000 nodes and 5 a second: 200 s).

Possible values:
* (node agent) ``0``: every heartbeat is an HTTP heartbeat with the full
  report, whatever the manager advertises;
* a number of seconds.
"""),
    cfg.FloatOpt("full_reports_per_second", default=5.0, min=0.1,
                 help="""
(Manager) How many unchanged full reports a second the manager takes from
all its nodes together; it stretches the interval it advertises to keep to
it (an HTTP heartbeat costs milliseconds of its CPU).
"""),
]


def register_opts(conf):
    conf.register_group(liveness_group)
    conf.register_opts(liveness_opts, group=liveness_group)


def list_opts():
    return {liveness_group: liveness_opts}
