"""Bearer tokens.  Only SHA-256 digests are stored: a leaked database
does not leak credentials."""
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
