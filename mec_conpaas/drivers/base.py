"""Cloud driver interface.

A driver turns "an instance of service S on node N" into something that
runs.  The manager calls only these methods; everything node-specific hides
behind them.  As in libcloud, a driver declares the optional features it
supports, and the manager checks them (:func:`require`) before it starts an
operation, instead of catching NotImplementedError halfway through one.

Drivers are registered under the ``mec_conpaas.drivers`` entry point and
loaded by name (``[manager] driver``, see :mod:`mec_conpaas.drivers`).
Every access point runs a node agent whatever the driver: a driver that
creates instances elsewhere (nova) implements create/delete/list there and
the rest through ``node.agent``, the node agent's client.
"""
import abc
import dataclasses

from mec_conpaas import exception
from mec_conpaas.drivers import nodeagent

FEATURE_FREEZE = "freeze"              # freeze/thaw (cgroup freezer)
FEATURE_STATE_COPY = "state_copy"      # node-to-node copy of the state directory
FEATURE_STATE_EXPORT = "state_export"  # state directory out and in as a tar
FEATURE_LOGS = "logs"
FEATURES = (FEATURE_FREEZE, FEATURE_STATE_COPY, FEATURE_STATE_EXPORT,
            FEATURE_LOGS)

# What each operation needs beyond create/delete/list, checked before it
# is accepted: a migration freezes the source and copies its state, a stop
# saves every instance's state on the manager and a start puts it back.
OPERATION_FEATURES = {
    "migrate": (FEATURE_FREEZE, FEATURE_STATE_COPY),
    "drain": (FEATURE_FREEZE, FEATURE_STATE_COPY),
    "stop": (FEATURE_STATE_EXPORT,),
    "start": (FEATURE_STATE_EXPORT,),
    "logs": (FEATURE_LOGS,),
}


class FeatureNotSupported(exception.Conflict):
    code = "feature_not_supported"


def require(driver, operation):
    """Raise FeatureNotSupported, naming what is missing, if ``driver``
    cannot do ``operation`` (a key of OPERATION_FEATURES)."""
    missing = [f for f in OPERATION_FEATURES.get(operation, ())
               if f not in driver.features]
    if missing:
        raise FeatureNotSupported(
            "%s is not supported by this cloud's driver %r: it lacks the "
            "feature(s) %s; nothing was started (an admin can choose another "
            "[manager] driver)" % (operation, driver.name, ", ".join(missing)))


@dataclasses.dataclass(frozen=True)
class NodeRef:
    """A node as drivers see it: its name, the client of its node agent
    (the AP-local data path) and its host name (what a cloud calls the
    hypervisor, e.g. for nova's host targeting)."""
    name: str
    agent: nodeagent.NodeAgentClient
    hostname: str | None = None


@dataclasses.dataclass
class InstanceSpec:
    id: str
    service_id: str
    service_name: str
    service_type: str
    bundle_sha256: str
    memory_mb: int
    cpus: float
    role: str = "worker"
    # Empty: the node fills in the manager's address as it reaches it.
    master_ip: str = ""
    # Start the container with the app held: its service agent runs
    # init.sh/run.sh only on POST /start, after the state is copied in.
    hold: bool = False


class CloudDriver(abc.ABC):
    name = None
    features = frozenset()

    def __init__(self, conf=None):
        self.conf = conf

    def node_can_host(self, node) -> bool:
        """Whether the node (its store record, ``models.Node``) can get
        instances from this driver: placement leaves the others out."""
        return node.max_instances > 0

    def shares_instance_network(self, container_backend) -> bool:
        """Whether nodes of this container backend put their instances on
        one network they all share (neutron's provider network, on-link at
        every such node) instead of a network of their own behind the node.

        The join allocator asks it: a shared network is recorded as such,
        may be named by several nodes, and is never routed via one of them
        (that route would replace the on-link one on the others).  A fact
        of the node's backend, whichever driver the manager runs: nova's
        instances are ports on the provider network every nova AP bridges
        (brq); libvirt's sit on the node's own bridge."""
        return container_backend == "nova"

    def node_inventory(self):
        """The cloud's own view of its compute hosts, when it has one:
        ``{host name: {"up": bool, "vcpus", "vcpus_free", "memory_mb",
        "memory_mb_free"}}`` (free: what the cloud's scheduler can still
        allocate; optionally ``vcpus_reserved``/``memory_mb_reserved`` and
        ``cpu_allocation_ratio``/``ram_allocation_ratio``, which the
        manager checks against the node's own reserve), or None.

        Where a cloud schedules the nodes' resources itself (nova and
        placement), the PaaS must agree with it: ``node list``/``node show``
        show each node's entry and add the hosts no node agent registered
        for, and placement treats a host the cloud calls down as down and
        fits no more instances on a node than its free vCPUs and memory
        take (:mod:`mec_conpaas.manager.inventory`).  None, the default
        (the ``lxc`` driver): the node agents' registrations and heartbeats
        are the inventory.  Failing to read it is logged and gives None, so
        a slow cloud API does not stop placement or ``node list``."""
        return None

    @abc.abstractmethod
    def create_instance(self, node: NodeRef, spec: InstanceSpec) -> dict:
        """Start an instance; return at least ``{"address": ...}``, and
        ``"handle"``: whatever the driver needs later to find it again (a
        nova server UUID), stored with the instance and given back to
        ``delete_instance``.  Must be idempotent for the same ``spec.id``."""

    @abc.abstractmethod
    def delete_instance(self, node: NodeRef, instance_id: str,
                        handle=None) -> None:
        """Destroy an instance; deleting a missing one is not an error.
        ``handle``: what ``create_instance`` returned as such (None if the
        create did not get that far)."""

    @abc.abstractmethod
    def list_instances(self, node: NodeRef) -> list:
        """Instances present on the node, ``[{"id", "service_id", ...}]``,
        with their ``"handle"`` if the driver has one (the orphan sweep
        deletes those no instance row accounts for)."""

    def freeze(self, node, instance_id, quiesce_port=None):
        """Freeze when no request on ``quiesce_port`` is mid-processing."""
        raise NotImplementedError

    def thaw(self, node, instance_id):
        raise NotImplementedError

    def stop_frozen(self, node, instance_id):
        """Kill a migrated, still frozen source at once after the switch,
        ahead of ``delete_instance`` (which must also do it).  Optional:
        None when the driver leaves it to the delete."""
        return None

    def copy_state(self, src: NodeRef, src_id: str, dst: NodeRef, dst_id: str,
                   final=False):
        """Bulk copy (``final=False``) while the source serves, then the
        final delta with the source frozen."""
        raise NotImplementedError

    def warm_final_copy(self, src, src_id, dst, dst_id):
        """Make the final copy's path ready ahead of the critical window
        (an open connection from source to target).  Optional."""
        return None

    def freeze_and_copy(self, src, src_id, dst, dst_id, quiesce_port=None,
                        restore=False, warmed=False):
        """Freeze the source, then copy the final delta: migration's critical
        window.  With ``restore``, a driver may also have the target's app
        take the delta up (its service agent's ``POST /restore``, phase
        ``finish``) and return its answer as ``"restore"``; without that key
        the manager asks the service agent itself.  Drivers that can do it
        all in one request override this.  ``warmed``: ``warm_final_copy``
        ran just before."""
        frozen = self.freeze(src, src_id, quiesce_port)
        copied = self.copy_state(src, src_id, dst, dst_id, final=True)
        return dict(copied, freeze_attempts=(frozen or {}).get("attempts", 1))

    def export_state(self, node, instance_id) -> bytes:
        """The instance's whole state directory as a tar that
        ``import_state`` takes (``service stop`` keeps it)."""
        raise NotImplementedError

    def import_state(self, node, instance_id, data: bytes) -> None:
        """Replace an instance's state directory with an ``export_state``
        tar; the instance should still be held."""
        raise NotImplementedError

    def logs(self, node, instance_id) -> str:
        """The instance's app log (FEATURE_LOGS)."""
        raise NotImplementedError
