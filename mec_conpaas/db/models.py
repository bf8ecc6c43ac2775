"""Persistent state of the manager.

Instances are written *before* their container exists and removed *after*
it is gone, so every container on a node has a row: that is what lets a
restarted manager find and remove orphans.
"""
import datetime
import json
import uuid

from sqlalchemy import JSON
from sqlalchemy import Boolean
from sqlalchemy import DateTime
from sqlalchemy import Float
from sqlalchemy import ForeignKey
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import TypeDecorator
from sqlalchemy import UniqueConstraint
from sqlalchemy import false
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship


class ReportJSON(TypeDecorator):
    """A node's last report: JSON, decoded once per distinct text.

    Placement reads every node's report (its capacity); at 1,000 nodes
    decoding them all was most of a placement's time, and a report's text
    changes only at the node's next full report.  The decoded value is
    shared between reads of the same text, so it must not be changed in
    place (nothing does: a new report replaces the old one)."""

    impl = JSON
    cache_ok = True
    CACHE_MAX = 4096  # texts; a full cache is cleared (a placement decodes again)
    _cache = {}

    def result_processor(self, dialect, coltype):
        cache, limit = self._cache, self.CACHE_MAX

        def process(value):
            if not isinstance(value, (str, bytes)):
                return value  # None, or a driver that decodes JSON itself
            got = cache.get(value)
            if got is None:
                if len(cache) >= limit:
                    cache.clear()
                got = cache[value] = json.loads(value)
            return got
        return process


def new_id():
    return str(uuid.uuid4())


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class Token(Base):
    """API credential; only the SHA-256 of the secret is stored."""
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | member | node
    user: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    tenant = relationship("Tenant")


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    mac: Mapped[str] = mapped_column(String(17))
    address: Mapped[str] = mapped_column(String(64))
    agent_port: Mapped[int] = mapped_column(Integer)
    agent_token: Mapped[str] = mapped_column(String(128))
    # Set: the agent serves HTTPS with the certificate issued at join for this
    # name (manager/tls.py agent_server_name); unset: plain HTTP.
    agent_server_name: Mapped[str | None] = mapped_column(String(128))
    container_backend: Mapped[str] = mapped_column(String(16), default="libvirt")
    instance_network: Mapped[str | None] = mapped_column(String(64))
    max_instances: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="up")
    # An admin's "node drain" makes a node unschedulable (nova's "service
    # disable", kubectl's "cordon"): nothing new is placed there until
    # "node enable"; it keeps serving as an access point.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False,
                                           server_default=false())
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict] = mapped_column(ReportJSON, default=dict)
    # What first boot found wrong in a flashed node's settings file (non-fatal;
    # sent at registration): None for a node without a card.
    settings_warnings: Mapped[list | None] = mapped_column(JSON)
    registered_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    last_heartbeat: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="INIT")
    home_node: Mapped[str | None] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer, unique=True)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    memory_mb: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[float] = mapped_column(Float)
    # The QoS spec (policies/qos.py: read it through qos.of): None is
    # the default of each field.
    priority: Mapped[int | None] = mapped_column(Integer)
    latency_objective_ms: Mapped[float | None] = mapped_column(Float)
    max_users: Mapped[int | None] = mapped_column(Integer)
    min_instances: Mapped[int | None] = mapped_column(Integer)
    max_instances: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # The operation that holds the service: set atomically by a conditional
    # UPDATE (or on insert, for a create) and cleared when it ends, so one
    # mutating operation at a time runs per service on any SQL backend.
    operation_id: Mapped[str | None] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow,
                                                          onupdate=utcnow)
    instances = relationship("Instance", back_populates="service",
                             order_by="Instance.created_at")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # None once its service is deleted while its node was down: the row
    # keeps the node's slot counted until the sweep removes the container.
    service_id: Mapped[str | None] = mapped_column(ForeignKey("services.id"),
                                                   index=True)
    node_name: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), default="worker")
    # What the cloud driver returned to find the instance again (e.g. a
    # nova server UUID); None for drivers that need only the id.
    handle: Mapped[dict | None] = mapped_column(JSON)
    # Its size once auto-scaling resized it (None: its service's).
    cpus: Mapped[float | None] = mapped_column(Float)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    # BUILDING (STANDBY) -> ACTIVE -> DELETING; rows in BUILDING after a
    # crash are treated as never finished.  A DELETING row whose service no
    # operation holds (or that has no service) is the orphan sweep's.
    state: Mapped[str] = mapped_column(String(16), default="BUILDING")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    service = relationship("Service", back_populates="instances")


class Operation(Base):
    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    service_id: Mapped[str | None] = mapped_column(String(36), index=True)
    service_name: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    # PENDING -> RUNNING -> SUCCEEDED | FAILED; a failed attempt goes back
    # to PENDING until [manager] operation_max_attempts (counted in
    # ``attempts``, across restarts) is reached.
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[str] = mapped_column(String(255), default="")
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    journal: Mapped[dict] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow,
                                                          onupdate=utcnow)


class NodeAllocation(Base):
    """What the allocator (manager/allocation.py) gave a node, keyed by its
    stable identity (Pi serial or MAC), so a reboot or re-flash gets the
    same; deleted when the node is removed.  Unique columns keep two live
    nodes from sharing a number or subnet even across manager processes."""
    __tablename__ = "node_allocations"
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    node_id: Mapped[str | None] = mapped_column(String(36), unique=True)
    node_name: Mapped[str | None] = mapped_column(String(64))
    # NULL for a node whose instances are on a network shared by several
    # nodes (nova's provider network): that one is in shared_network.
    instance_network: Mapped[str | None] = mapped_column(String(64), unique=True)
    shared_network: Mapped[str | None] = mapped_column(String(64))
    client_network: Mapped[str | None] = mapped_column(String(64), unique=True)
    wifi_channel: Mapped[int | None] = mapped_column(Integer)
    availability_zone: Mapped[str | None] = mapped_column(String(64))
    # joined (allocated here) | registered (fixed by a playbook, recorded)
    source: Mapped[str] = mapped_column(String(16), default="joined")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class JoinToken(Base):
    """``mec-conpaas-manage node-token create``: lets a node join (once, N
    times or until revoked/expired); only the secret's SHA-256 is kept."""
    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    description: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    max_uses: Mapped[int | None] = mapped_column(Integer)  # None: unlimited
    uses: Mapped[int] = mapped_column(Integer, default=0)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False,
                                          server_default=false())
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


# -- the mobility loop's own state (manager/mobility.py) ----------------------
# Kept so a restarted manager keeps follow-the-user's hysteresis (where each
# user is and since when, when a service last moved) and knows the standbys
# it started (else they would be taken for serving instances and never go).
class MobilityUser(Base):
    __tablename__ = "mobility_users"
    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    ap: Mapped[str] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(64))
    since: Mapped[float] = mapped_column(Float)  # the loop's clock (epoch s)
    address: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(17))
    signal: Mapped[float | None] = mapped_column(Float)


class MobilityTransition(Base):
    """Handover counts ahead_handover predicts from: ``order`` 1 keys by the
    AP left, 2 by ``previous>current``."""
    __tablename__ = "mobility_transitions"
    order: Mapped[int] = mapped_column(Integer, primary_key=True)
    origin: Mapped[str] = mapped_column(String(130), primary_key=True)
    next: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class MobilityStandby(Base):
    """A standby the loop started (in the same transaction as its scale
    operation): ``node``'s instance of the service is the loop's to drop."""
    __tablename__ = "mobility_standbys"
    service_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)


class MobilityMove(Base):
    """When the loop last migrated a service (its dwell starts there)."""
    __tablename__ = "mobility_moves"
    service_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[float] = mapped_column(Float)
