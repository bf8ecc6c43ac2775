"""Errors a user can cause, each with the HTTP status the API answers with.

Messages say what to fix; they are shown verbatim by the CLI.
"""


class MecError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class BadRequest(MecError):
    status = 400
    code = "bad_request"


class InvalidBundle(BadRequest):
    code = "invalid_bundle"


class BundleTooLarge(MecError):
    status = 413
    code = "bundle_too_large"


class Unauthorized(MecError):
    status = 401
    code = "unauthorized"


class Forbidden(MecError):
    status = 403
    code = "forbidden"


class NotFound(MecError):
    status = 404
    code = "not_found"


class Conflict(MecError):
    status = 409
    code = "conflict"


class InsufficientCapacity(Conflict):
    code = "insufficient_capacity"


class NodeError(MecError):
    """A node agent or container failed; operations roll back on it."""
    status = 502
    code = "node_error"


class EnrollmentNotConfigured(NotFound):
    """This manager hands out no OpenStack credentials (an edge without
    OpenStack): the node should be deployed without OpenStack."""
    code = "enrollment_not_configured"


class EnrollmentUnavailable(MecError):
    """The enrollment file is configured but cannot be served; the admin
    must fix it; the node may retry."""
    status = 503
    code = "enrollment_unavailable"
