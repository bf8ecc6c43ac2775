"""Cloud driver interface.

A driver turns "an instance of service S on node N" into something that
runs.  The manager calls only these methods; everything node-specific hides
behind them.  As in libcloud, a driver declares the optional features it
supports, and the manager checks them instead of catching
NotImplementedError halfway through an operation.
"""
import abc
import dataclasses

FEATURE_FREEZE = "freeze"           # cgroup-freezer suspend/resume
FEATURE_STATE_COPY = "state_copy"   # host-side copy of the state directory
FEATURE_LOGS = "logs"


@dataclasses.dataclass(frozen=True)
class NodeRef:
    name: str
    address: str
    agent_port: int
    agent_token: str

    @property
    def url(self):
        return "http://%s:%d" % (self.address, self.agent_port)


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

    @abc.abstractmethod
    def create_instance(self, node: NodeRef, spec: InstanceSpec) -> dict:
        """Start an instance; return at least ``{"address": ...}``.
        Must be idempotent for the same ``spec.id``."""

    @abc.abstractmethod
    def delete_instance(self, node: NodeRef, instance_id: str) -> None:
        """Destroy an instance; deleting a missing one is not an error."""

    @abc.abstractmethod
    def list_instances(self, node: NodeRef) -> list:
        """Instances present on the node, ``[{"id", "service_id", ...}]``."""

    def freeze(self, node, instance_id, quiesce_port=None):
        """Freeze when no request on ``quiesce_port`` is mid-processing."""
        raise NotImplementedError

    def thaw(self, node, instance_id):
        raise NotImplementedError

    def copy_state(self, src: NodeRef, src_id: str, dst: NodeRef, dst_id: str,
                   final=False):
        """Bulk copy (``final=False``) while the source serves, then the
        final delta with the source frozen."""
        raise NotImplementedError

    def freeze_and_copy(self, src, src_id, dst, dst_id, quiesce_port=None,
                        restore=False):
        """Freeze the source, then copy the final delta: migration's critical
        window.  With ``restore``, a driver may also have the target's app
        take the delta up (its service agent's ``POST /restore``, phase
        ``finish``) and return its answer as ``"restore"``; without that key
        the manager asks the service agent itself.  Drivers that can do it
        all in one request override this."""
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
        raise NotImplementedError
