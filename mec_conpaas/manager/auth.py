"""Who is calling: the PaaS's own bearer tokens, or a keystone project's
user (mec_conpaas/api/keystone.py).  Only SHA-256 digests of PaaS tokens
are stored: a leaked database does not leak credentials."""
import dataclasses
import hashlib
import secrets

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models


def digest(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass
class Context:
    role: str
    user: str
    tenant_id: str | None
    token_id: str | None = None  # for logs: which token, never its secret
    # Keystone's role names (with implied ones) when keystone vouched, else
    # None: then ``role`` is the PaaS token's.
    roles: tuple | None = None

    def creds(self):
        """What the policy (mec_conpaas/api/policy.py) checks against:
        keystone's roles as they are (a keystone reader is no member), plus
        ``admin`` for [api] keystone_admin_role."""
        if self.roles is None:
            roles = {self.role}
        else:
            roles = set(self.roles) | ({"admin"} if self.role == "admin" else set())
        return {"roles": sorted(roles), "user": self.user,
                "project_id": self.tenant_id}


def issue(session, role, user, tenant_id=None):
    secret = secrets.token_urlsafe(32)
    session.add(models.Token(secret_hash=digest(secret), role=role, user=user,
                             tenant_id=tenant_id))
    return secret


def ensure_tenant(session, name):
    tenant = session.scalar(select(models.Tenant).where(models.Tenant.name == name))
    if tenant is None:
        tenant = models.Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def ensure_project(session, project_id, project_name):
    """The tenant of a keystone project: keyed by the project's id, named
    by its name (kept current: projects can be renamed). A name another
    tenant row holds (a PaaS-token tenant, or a deleted project's) gets the
    id's start appended, so names stay unique."""
    tenant = session.get(models.Tenant, project_id)
    name = project_name or project_id
    clash = session.scalar(select(models.Tenant).where(
        models.Tenant.name == name, models.Tenant.id != project_id))
    if clash is not None:
        name = "%s-%s" % (name[:55], project_id[:8])
    if tenant is None:
        tenant = models.Tenant(id=project_id, name=name)
        session.add(tenant)
        session.flush()
    elif tenant.name != name:
        tenant.name = name
    return tenant


def authenticate(session, header):
    scheme, _, secret = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise exception.Unauthorized(
            "this API needs a token: pass --token or set MEC_CONPAAS_TOKEN "
            "(mec-conpaas-manage bootstrap prints the admin's)")
    token = session.scalar(select(models.Token).where(
        models.Token.secret_hash == digest(secret.strip())))
    if token is None:
        raise exception.Unauthorized("unknown token")
    return Context(role=token.role, user=token.user, tenant_id=token.tenant_id,
                   token_id=token.id)
