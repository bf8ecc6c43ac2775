"""Who may do what: oslo.policy rules with their defaults in code.

The defaults are what the API allowed before policies existed, so a
deployment without a policy file behaves as it always did; an operator
changes an answer by overriding a rule in ``[oslo_policy] policy_file``
(``etc/mec-conpaas/policy.yaml.sample`` lists every rule). Both auth
strategies (the PaaS's own tokens and keystone) reach the same checks: the
caller's roles are ``admin``, ``member`` or ``node`` for PaaS tokens, the
token's keystone roles (plus ``admin`` for ``[api] keystone_admin_role``)
for keystone.
"""
from oslo_config import cfg
from oslo_policy import policy

from mec_conpaas import exception

ADMIN = "rule:context_is_admin"
MEMBER = "rule:project_member"
READER = "rule:project_reader"
NODE_AGENT = "rule:node_agent"

base_rules = [
    policy.RuleDefault("context_is_admin", "role:admin",
                       "PaaS admins: every project's services, node drain and enable."),
    policy.RuleDefault("project_member", "role:member or rule:context_is_admin",
                       "Members of a tenant (keystone project) change its services."),
    policy.RuleDefault("project_reader", "role:reader or rule:project_member",
                       "Readers of a tenant see its services and operations."),
    policy.RuleDefault("node_agent", "role:node or rule:context_is_admin",
                       "Node agents (PaaS node tokens) register and report."),
]


def _rule(name, check, description, method, path):
    return policy.DocumentedRuleDefault(name, check, description,
                                        [{"method": method, "path": path}])


api_rules = [
    _rule("nodes:register", NODE_AGENT, "A node agent registers its node.",
          "POST", "/v1/nodes/register"),
    _rule("nodes:heartbeat", NODE_AGENT, "A node agent reports it is alive.",
          "POST", "/v1/nodes/{node_id}/heartbeat"),
    _rule("nodes:enrollment", NODE_AGENT,
          "A node's first boot fetches the OpenStack service credentials.",
          "GET", "/v1/nodes/enrollment"),
    _rule("bundles:get", NODE_AGENT, "A node agent downloads an application bundle.",
          "GET", "/v1/bundles/{sha256}"),
    _rule("nodes:list", "@", "List the nodes (any authenticated caller).",
          "GET", "/v1/nodes"),
    _rule("nodes:show", "@", "Show a node (any authenticated caller).",
          "GET", "/v1/nodes/{name}"),
    _rule("nodes:show:all_instances", "rule:context_is_admin or role:node",
          "See every tenant's instances in node reports (others see their own).",
          "GET", "/v1/nodes/{name}"),
    _rule("nodes:drain", ADMIN, "Disable a node and move its instances away.",
          "POST", "/v1/nodes/{name}/drain"),
    _rule("nodes:enable", ADMIN, "Make a drained node schedulable again.",
          "POST", "/v1/nodes/{name}/enable"),
    _rule("nodes:delete", ADMIN, "Remove a node (remove-node): its allocation "
          "and credential go, the other nodes drop their routes to it.",
          "DELETE", "/v1/nodes/{name}"),
    _rule("nodes:credential:revoke", ADMIN, "Revoke a node's own credential.",
          "POST", "/v1/nodes/{name}/credential/revoke"),
    _rule("services:create", MEMBER, "Create a service.", "POST", "/v1/services"),
    _rule("services:list", READER, "List the tenant's services.",
          "GET", "/v1/services"),
    _rule("services:list:all_tenants", ADMIN,
          "List every tenant's services (?all_tenants=true).",
          "GET", "/v1/services?all_tenants=true"),
    _rule("services:show", READER, "Show a service.", "GET", "/v1/services/{name}"),
    _rule("services:logs", READER, "Read a service's instance logs.",
          "GET", "/v1/services/{name}/logs"),
    _rule("services:delete", MEMBER, "Delete a service.",
          "DELETE", "/v1/services/{name}"),
    _rule("services:delete:force", ADMIN,
          "Delete forgetting instances on nodes that do not answer (?force=true).",
          "DELETE", "/v1/services/{name}?force=true"),
    _rule("services:scale", MEMBER, "Scale a service.",
          "POST", "/v1/services/{name}/scale"),
    _rule("services:migrate", MEMBER, "Migrate a service to another node.",
          "POST", "/v1/services/{name}/migrate"),
    _rule("services:stop", MEMBER, "Stop a service, keeping its state.",
          "POST", "/v1/services/{name}/stop"),
    _rule("services:start", MEMBER, "Start a stopped service.",
          "POST", "/v1/services/{name}/start"),
    _rule("operations:list", READER, "List the tenant's operations.",
          "GET", "/v1/operations"),
    _rule("operations:show", READER, "Show one of the tenant's operations.",
          "GET", "/v1/operations/{id}"),
    _rule("operations:show:all_tenants", ADMIN,
          "Follow any tenant's operation (a node drain's).",
          "GET", "/v1/operations/{id}"),
    _rule("dashboard:view", READER, "The web dashboard's view of the tenant's "
          "services and the nodes, and its live updates (every tenant's with "
          "services:list:all_tenants).", "GET", "/dashboard/state"),
    _rule("users:list", ADMIN, "List the Wi-Fi users the access points report, "
          "where they are and the services they use.", "GET", "/v1/users"),
    _rule("users:attach", ADMIN, "Attach an emulated user to an access point "
          "(embedded edge).", "POST", "/v1/users/{name}/attach"),
    _rule("users:move", ADMIN, "Move an attached emulated user to another access "
          "point (embedded edge).", "POST", "/v1/users/{name}/move"),
    _rule("users:detach", ADMIN, "Detach an emulated user (embedded edge).",
          "POST", "/v1/users/{name}/detach"),
    _rule("metrics:get", "rule:context_is_admin or role:node",
          "The manager's Prometheus metrics (they name every tenant's services "
          "and nodes).", "GET", "/metrics"),
]

# Endpoints a tenant must not learn exist: a denial answers like an unknown
# path (404), as before policies. Every other denial is a 403 naming the rule.
HIDDEN = frozenset({"nodes:register", "nodes:heartbeat", "nodes:enrollment",
                    "bundles:get", "nodes:drain", "nodes:enable",
                    "metrics:get"})

_ENFORCER = None


def list_rules():
    """Entry point ``oslo.policy.policies`` (oslopolicy-sample-generator)."""
    return base_rules + api_rules


def init(conf):
    """The process's enforcer; the policy file is re-read when it changes."""
    global _ENFORCER
    if (_ENFORCER is None or _ENFORCER.conf is not conf
            or _ENFORCER.policy_file != conf.oslo_policy.policy_file):
        _ENFORCER = policy.Enforcer(conf)
        _ENFORCER.register_defaults(list_rules())
    return _ENFORCER


def reset():
    """Forget the enforcer (tests that change the configuration)."""
    global _ENFORCER
    _ENFORCER = None


def get_enforcer():
    """Entry point ``oslo.policy.enforcer`` (oslopolicy-policy-generator):
    the rules in effect with the manager's configuration files (their
    ``[oslo_policy] policy_file``)."""
    conf = cfg.ConfigOpts()
    conf([], project="mec-conpaas")
    return init(conf)


def check(conf, rule, creds, target):
    """True if ``creds`` may apply ``rule`` to ``target``."""
    return init(conf).authorize(rule, target, creds, do_raise=False)


def authorize(conf, rule, creds, target, forbidden=None):
    """Raise if the policy denies: 404 for endpoints tenants must not see,
    else 403 with ``forbidden`` (or a message naming the rule)."""
    if check(conf, rule, creds, target):
        return
    if rule in HIDDEN:
        raise exception.NotFound("no such API path")
    raise exception.Forbidden(forbidden or (
        "the manager's policy does not allow %s for you: ask an admin (the "
        "rule is in the file [oslo_policy] policy_file names)" % rule))


def flag(args, name):
    """A true/false query parameter (``?all_tenants=true``)."""
    value = args.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise exception.BadRequest("%s must be true or false" % name)
    return value in ("true", "1", "yes")
