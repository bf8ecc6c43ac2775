"""Requests, and optionally answers, checked against the API's OpenAPI document.

openapi.yaml beside this module is the one description of the API: the
manager serves it (GET /v1/openapi.json), refuses requests off it with 400
before any work is done (like nova's api/validation), and the tests check
every answer against it.  openapi-core does the validating; this module only
turns its findings into the API's error shape, with the messages the
document's ``x-error`` fields give.

A request off the schema is not refused at once: the handler's context()
raises the error after the token and its role were checked, so that an
unauthenticated caller still gets 401 and a tenant still cannot tell an
admin-only path from an unknown one.
"""
import functools
import logging
import os

import flask
import yaml
from openapi_core import Config
from openapi_core import OpenAPI
from openapi_core.casting.schemas.exceptions import CastError
from openapi_core.contrib.flask import FlaskOpenAPIRequest
from openapi_core.contrib.flask import FlaskOpenAPIResponse
from openapi_core.deserializing.media_types.exceptions import MediaTypeDeserializeError
from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.validation.request import exceptions as req_exc
from openapi_core.validation.schemas import oas30_write_schema_validators_factory
from openapi_core.validation.schemas.exceptions import InvalidSchemaValue
from werkzeug.datastructures import MultiDict

from mec_conpaas import exception

LOG = logging.getLogger(__name__)
SPEC_FILE = os.path.join(os.path.dirname(__file__), "openapi.yaml")
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


@functools.cache
def document():
    with open(SPEC_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _parsed_form(_value, **_params):
    """The form werkzeug parsed (as the handler sees it), uploads as empty
    bytes: openapi-core's own multipart parser would hold the whole bundle
    in memory a second time, and the bundle is checked by bundles.validate."""
    req = flask.request
    form = MultiDict(req.form.items(multi=True))
    for key in req.files:
        form.add(key, b"")
    return form


@functools.cache
def spec():
    return OpenAPI.from_dict(document(), config=Config(
        extra_media_type_deserializers=dict.fromkeys(FORMS, _parsed_form)))


class _Request(FlaskOpenAPIRequest):
    """Leaves a form's stream to werkzeug's streaming parser."""

    @property
    def body(self):
        if self.request.mimetype in FORMS:
            return b"form"  # not read: _parsed_form uses request.form
        return super().body


def _field_error(schema, field, value, fallback):
    """The document's message for ``field`` when it has one."""
    template = schema.get("x-error") if isinstance(schema, dict) else None
    if not template:
        text = "%s: %s" % (field, fallback) if field else fallback
    else:
        if isinstance(value, str) and len(value) > 40:
            value = value[:40] + "..."
        text = template.format(value="" if value is None else value)
    return text if len(text) <= 300 else text[:300] + "..."


def _body_schema(operation):
    content = (operation or {}).get("requestBody", {}).get("content", {})
    media = content.get(flask.request.mimetype) or next(iter(content.values()), {})
    return _resolve(media.get("schema", {}))


def _resolve(schema):
    while isinstance(schema, dict) and "$ref" in schema:
        node = document()
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _operation():
    rule = flask.request.url_rule
    path = FlaskOpenAPIRequest(flask.request).path_pattern if rule else None
    item = document()["paths"].get(path, {})
    return item.get(flask.request.method.lower()), item


def _schema_messages(err, body_schema):
    for se in err.schema_errors:
        path = [str(p) for p in se.absolute_path]
        if se.validator == "required" and not path:
            missing = se.message.split("'")[1] if "'" in se.message else ""
            prop = _resolve(body_schema.get("properties", {}).get(missing, {}))
            yield _field_error(prop, missing, None, "is required")
        elif not path and se.validator == "type":
            yield "request body must be a JSON %s" % body_schema.get("type", "object")
        else:
            yield _field_error(se.schema, ".".join(path), se.instance, se.message)


def _message(errors):
    """One message for all that is wrong, each field named once."""
    operation, item = _operation()
    body_schema = _body_schema(operation)
    params = {p["name"]: p for p in
              map(_resolve, item.get("parameters", []) + (operation or {}).get(
                  "parameters", []))}
    out = []
    for e in errors:
        cause = e.__cause__
        if isinstance(e, req_exc.MissingRequiredRequestBody):
            out.append("this call needs a request body (%s)" % " or ".join(
                operation["requestBody"]["content"]))
        elif isinstance(e, req_exc.ParameterValidationError):
            out.append(_field_error(params.get(e.name, {}), e.name, None, str(
                cause or e)))
        elif isinstance(cause, InvalidSchemaValue):
            out.extend(_schema_messages(cause, body_schema))
        elif isinstance(cause, MediaTypeNotFound):
            out.append("request body must be %s (it is %s)" % (
                " or ".join(cause.availableMimetypes), cause.mimetype))
        elif isinstance(cause, MediaTypeDeserializeError):
            out.append("request body must be a JSON %s" % body_schema.get("type",
                                                                          "object"))
        elif isinstance(cause, CastError):
            # A form field that is not of its type: find which one.
            form = flask.request.form
            names = [k for k, s in body_schema.get("properties", {}).items()
                     if form.get(k) == cause.value] or [None]
            out.append(_field_error(_resolve(body_schema["properties"][names[0]])
                                    if names[0] else {}, names[0], cause.value,
                                    "must be of type %s" % cause.type))
        else:
            out.append(str(e))
    return "; ".join(dict.fromkeys(out))


def _inline(schema, depth=0):
    """``schema`` with every ``$ref`` replaced by what it names."""
    if depth > 32:
        raise RecursionError("a recursive schema")
    schema = _resolve(schema)
    if isinstance(schema, dict):
        return {k: _inline(v, depth + 1) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, depth + 1) for v in schema]
    return schema


@functools.cache
def _body_validator(path, method, mimetype):
    """The compiled check of a request body to an operation that has only
    path parameters of type string, or None (openapi-core checks it all).

    Why: openapi-core resolves the document's references at every request,
    1.5 ms of the manager's CPU for a node's heartbeat, about half of what
    it costs (README, "Control-plane scale").  The validator class and
    format checker are the ones openapi-core uses for a request body."""
    item = document()["paths"].get(path) or {}
    operation = item.get(method)
    content = ((operation or {}).get("requestBody") or {}).get("content") or {}
    if mimetype not in content:
        return None
    for p in map(_resolve, item.get("parameters", []) + operation.get("parameters", [])):
        if p.get("in") != "path" or _resolve(p.get("schema")) != {"type": "string"}:
            return None
    try:
        schema = _inline(content[mimetype].get("schema", {}))
    except RecursionError:
        return None
    factory = oas30_write_schema_validators_factory  # openapi-core's, for OpenAPI 3.0
    return factory.schema_validator_cls(schema, format_checker=factory.format_checker)


def _surely_valid(req):
    """Whether a JSON request is on the document for certain, checked
    cheaply: a body of an operation ``_body_validator`` compiles, no query.
    False is not "invalid": openapi-core then checks it and says what is
    wrong, as it always did."""
    if req.mimetype != "application/json" or req.query_string or req.url_rule is None:
        return False
    path = FlaskOpenAPIRequest(req).path_pattern
    check = _body_validator(path, req.method.lower(), req.mimetype)
    if check is None:
        return False
    body = req.get_json(silent=True)
    return body is not None and check.is_valid(body)


def check_request():
    """before_request: note what is off the schema for raise_if_off_schema()."""
    req = flask.request
    if req.routing_exception is not None:
        return  # 404/405 answer as they are
    if _surely_valid(req):
        return
    errors = [e for e in spec().iter_request_errors(_Request(req))
              if not isinstance(e, req_exc.SecurityValidationError)]
    if any(isinstance(e, PathError) for e in errors):
        # HEAD and OPTIONS, which Flask answers for every GET route (a route
        # missing from the document fails tests/unit/test_api_openapi.py).
        return
    if errors:
        flask.g.off_schema = exception.BadRequest(_message(errors))


def raise_if_off_schema():
    """Called by the handlers once the caller may know the path exists."""
    err = flask.g.pop("off_schema", None)
    if err is not None:
        raise err


def check_response(response):
    """after_request with [api] validate_responses: an answer off the schema
    is logged and turned into a 500 that says so, for the tests to fail on."""
    req = flask.request
    if req.url_rule is None or response.status_code >= 500 or response.is_streamed:
        return response  # a stream (the dashboard's events) has no body to check yet
    errors = [e for e in spec().iter_response_errors(_Request(req),
                                                      FlaskOpenAPIResponse(response))
              if not isinstance(e, req_exc.SecurityValidationError)]
    if not errors or any(isinstance(e, PathError) for e in errors):
        return response
    detail = "; ".join("%s%s" % (e, ": %s" % e.__cause__ if e.__cause__ else "")
                       for e in errors)[:2000]
    LOG.error("answer to %s %s (%d) is off the API schema: %s", req.method,
              req.path, response.status_code, detail)
    out = flask.jsonify(error={"code": "answer_off_schema",
                               "message": "the manager's answer (%d) is off its "
                                          "API schema: %s" % (
                                              response.status_code, detail)})
    out.status_code = 500
    return out


def install(app, validate_responses=False):
    spec()  # a broken document stops the manager at start, not at a request
    app.before_request(check_request)
    if validate_responses:
        app.after_request(check_response)
