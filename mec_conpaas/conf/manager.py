from oslo_config import cfg

manager_group = cfg.OptGroup("manager", title="PaaS manager")

manager_opts = [
    cfg.StrOpt("driver", default="lxc",
               help="""
Cloud driver that creates service instances.

Possible values:
* ``lxc``: libvirt LXC containers run by each node's node agent
  (the embedded edge, or Pis without OpenStack).
* the name of any other driver registered under the ``mec_conpaas.drivers``
  entry point (README, "Cloud drivers"); an unknown name stops the manager
  with the list of the installed ones.
"""),
    cfg.IntOpt("node_heartbeat_timeout", default=15, min=2,
               help="""
Seconds without a heartbeat after which a node is marked down.

A down node receives no new instances and cannot be a migration target.

Related options:
* ``[node_agent] heartbeat_interval`` should be well below this.
"""),
    cfg.IntOpt("max_bundle_size", default=100 * 1024 * 1024, min=1024,
               help="""
Largest accepted application bundle, in bytes, both as uploaded
(compressed) and once unpacked: a gzip bomb is refused.
"""),
    cfg.IntOpt("max_bundle_members", default=20000, min=1,
               help="Largest number of files and directories in a bundle."),
    cfg.PortOpt("service_port_min", default=20000,
                help="""
First TCP port handed out as a service's stable endpoint.

Every access point's HAProxy exposes the service on the same port.
"""),
    cfg.PortOpt("service_port_max", default=20999,
                help="Last TCP port handed out as a stable endpoint."),
    cfg.IntOpt("instance_memory_mb", default=128, min=16,
               help="Memory limit (cgroup) of each service instance."),
    cfg.FloatOpt("instance_cpus", default=0.5, min=0.05,
                 help="CPU limit (CFS quota) of each instance, in cores."),
    cfg.IntOpt("flink_instance_memory_mb", default=640, min=256,
               help="""
Memory limit of each instance of a ``flink`` service (a JobManager or a
TaskManager: a JVM plus, on TaskManagers, the job's Python workers).

Possible values:

* megabytes; the default fits the Pi-sized Flink settings of
  ``mec_conpaas/agents/service/flink.py`` (README "Flink and the far cloud"
  has the smallest TaskManager that runs the face-recognition job).
"""),
    cfg.FloatOpt("flink_instance_cpus", default=1.0, min=0.05,
                 help="CPU limit of each instance of a ``flink`` service, in "
                 "cores (a JVM starting on half a core takes a minute)."),
    cfg.IntOpt("health_timeout", default=60, min=1,
               help="""
Seconds a new instance may take to report healthy before the operation
that created it fails and is rolled back.
"""),
    cfg.StrOpt("migration_order", default="switch-first",
               choices=[("switch-first", "pause the target's app (it has "
                         "restore.sh), route every access point to it, then "
                         "freeze the source and move the final delta: "
                         "requests wait at the target for the delta only"),
                        ("freeze-first", "freeze the source, move the delta, "
                         "then route to the target: requests the source held "
                         "are retried on the target after its kill")],
               help="""
The order of a migration's critical window.  Apps without ``restore.sh`` are
restarted around the final delta and always use ``freeze-first``.
"""),
    cfg.IntOpt("operation_workers", default=4, min=1,
               help="Operations run in parallel (one at a time per service)."),
    cfg.IntOpt("operation_max_attempts", default=3, min=1,
               help="""
Attempts an operation gets before it ends FAILED and is rolled back.

Each start counts, including the one a restarted manager makes to resume
it, so a manager that keeps crashing during an operation gives up on it.
Errors the user caused (4xx) are not retried.

Possible values:
* 1: never retry.
* N > 1: retry N - 1 times, waiting ``operation_retry_delay`` seconds,
  doubled after each attempt.

Related options:
* ``operation_retry_delay``
"""),
    cfg.IntOpt("operation_retry_delay", default=5, min=0,
               help="""
Seconds before an operation's second attempt; each later attempt waits
twice as long as the one before.

Possible values:
* 0: retry at once.
* a number of seconds, e.g. more than ``node_heartbeat_timeout`` / 2 so a
  node that died mid-operation is marked down by the second retry.

Related options:
* ``operation_max_attempts``
"""),
    cfg.IntOpt("orphan_sweep_interval", default=60, min=1,
               help="""
Seconds between two sweeps of the edge, and before the first one.

A sweep removes containers no instance row accounts for (e.g. on a node
that was down when its service was deleted with ``--force``), removes
instances left DELETING, BUILDING or STANDBY by an operation that has
ended (never those of a running operation), and pushes every up access
point its proxy configuration again, which drops entries of deleted
services on a node that was down and refills a restarted node agent.

Possible values:
* a number of seconds (the sweep lists the containers of every up node,
  one request per node).
"""),
    cfg.IntOpt("node_lost_grace", default=120, min=0,
               help="""
Seconds a node may go without a heartbeat, or with its node agent not
answering the manager, before its services' instances are re-placed on
other up nodes (a ``heal`` operation per service), with the state of
their last snapshot.

This is a trade-off, and there is no value that is right everywhere:

* too short, and a Wi-Fi hiccup, a backbone switch restarting or a Pi
  rebooting (about a minute from an SD card) moves services that were
  about to come back by themselves.  Each needless move starts a new
  instance elsewhere, loses the writes made since the last snapshot (the
  instance on the flaky node kept serving its local users meanwhile) and
  leaves a stale container for the sweep when the node returns.
* too long, and users of a service whose only instance was on a node that
  really died get no answer until the grace ends and the new instance
  has started.

The clock starts at the node's last heartbeat, and never before this
manager started: a manager that was itself down or cut off does not take
its own absence for the nodes'.  A failed ``heal`` (no room anywhere) is
tried again after another grace period while the node stays lost.

Possible values:
* 0: never re-place automatically (a lost node's services wait for it, or
  for their owner to delete them).
* a number of seconds; values below ``node_heartbeat_timeout`` count as
  ``node_heartbeat_timeout``.  The default (2 minutes) rides out Wi-Fi
  reconnections and a reboot.

Related options:
* ``node_heartbeat_timeout`` marks a node down (nothing new is placed
  there) long before it is lost.
* ``snapshot_interval``: what a re-placed instance can lose.
"""),
    cfg.IntOpt("snapshot_interval", default=30, min=0,
               help="""
Seconds between two snapshots of each running instance's state
directory, kept on the manager (``$state_path/snapshots/SERVICE/INSTANCE``)
for when its node is lost.

Each snapshot asks the node agent for a manifest of the state directory
(one small request) and copies nothing when it is unchanged; otherwise
only the files that changed travel.  A re-placed instance loses what was
written after the last snapshot; files are copied one by one while the
app runs, so two files changed together may come from moments a few
milliseconds apart (an app that renames a finished file into place never
leaves half a file).

Possible values:
* 0: no snapshots; re-placed instances start with an empty state
  directory.
* a number of seconds: at most that many seconds of writes (plus one copy)
  are lost when a node dies; shorter costs one manifest request per
  instance per interval.

Related options:
* ``snapshot_max_bytes``; ``node_lost_grace`` (no snapshots are taken
  when it is 0: nothing would use them).
"""),
    cfg.IntOpt("snapshot_max_bytes", default=64 * 1024 * 1024, min=0,
               help="""
Largest state directory (sum of its files' sizes, in bytes) the manager
snapshots, per instance.

A bigger one is not copied (the manager logs it once per change of size);
its last snapshot that fitted, if any, is what a re-placement restores.

Possible values:
* 0: no limit.
* a number of bytes; the manager's disk needs room for one snapshot per
  running instance, plus the files that changed during a copy.
"""),
    cfg.StrOpt("topology_file",
               help="""
Edge topology (YAML) giving the latency of each link between access points.

Used to compute which instances are nearest to each access point.

Possible values:
* unset: every node is equally near to every other.
"""),
    cfg.IntOpt("instance_maxconn", default=4, min=0,
               help="""
Requests each access point's HAProxy has in progress at once on one service
instance.

Further requests wait in HAProxy's queue (at most ``timeout queue``, 10 s)
for a free slot, or spill to the service's farther instances (see
``proxy_far_tier``), instead of piling onto an instance that cannot take
them.  Size it to what one instance serves at once without slowing down.
The default suits the web servers the service agent runs (a listen backlog
of 5, a half-core instance): measured with 50 users on one access point
(bench/overload.py, computing app), 2 to 8 gave no failed request, 4 the
lowest p99; 16 let a busy instance's backlog overflow, and the dropped
connections failed after HAProxy's retries.

Possible values:
* a positive number of requests;
* ``0``: no limit (HAProxy never queues; an overloaded instance answers
  slowly or drops connections).

Related options:
* ``proxy_far_tier``
"""),
    cfg.StrOpt("proxy_far_tier", default="spill",
               choices=[("spill", "farther instances take what overflows the "
                         "nearest ones (their slots all busy), and everything "
                         "while none of the nearest is up"),
                        ("backup", "farther instances are HAProxy backup "
                         "servers: used only while none of the nearest is up; "
                         "overload waits in the queue")],
               help="""
What an access point's proxy does with a service's instances that are not
the nearest to it.

``service show`` tells each instance's tier (``local``, ``spill`` or
``backup``) per access point.

Related options:
* ``instance_maxconn``: the nearest instances' slots.
"""),
    cfg.IntOpt("drain_timeout", default=5, min=0,
               help="""
Seconds a removed instance keeps serving the requests it already has
before it is destroyed.
"""),
    cfg.StrOpt("openstack_enrollment_file",
               help="""
JSON file with the deployment's OpenStack service credentials, served to
edge nodes at ``GET /v1/nodes/enrollment``.

A flashed Pi image carries nova-compute, neutron-linuxbridge-agent and
cinder-volume with placeholder passwords; at first boot the node fetches
the real ones here, authenticated by its registration token.  The file is
read on every request, so passwords can be rotated without a restart.  It
holds secrets: keep it readable only by the manager (mode 0640).  Format::

    {"controller_host": "192.0.2.10",
     "passwords": {"rabbit": "...", "nova": "...", "placement": "...",
                   "neutron": "...", "cinder": "...", "cinder_db": "..."}}

Possible values:
* unset: no OpenStack on this edge; the endpoint answers 404
  ``enrollment_not_configured``.
* a path: the file above; when it is missing, unreadable or incomplete
  the endpoint answers 503 ``enrollment_unavailable`` and the manager
  logs what is wrong.

Related options:
* The ``mec_conpaas_manager`` Ansible role writes
  ``/etc/mec-conpaas/openstack-enrollment.json`` and sets this option when
  the deployment has OpenStack.
"""),
]


def register_opts(conf):
    conf.register_group(manager_group)
    conf.register_opts(manager_opts, group=manager_group)


def list_opts():
    return {manager_group: manager_opts}
