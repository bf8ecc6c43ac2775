#!/usr/bin/python3
"""Idempotently ensure OpenStack catalog objects from a JSON spec (MEC-ConPaaS roles).

Usage: mec_os_ensure.py SPEC.json   (cloud taken from OS_CLOUD / clouds.yaml)

One process and one token for everything the openstack_controller role needs (projects,
users, role assignments, services, endpoints, flavors, aggregates / availability zones,
networks), where about 30 `openstack` CLI calls took 37 s. Prints one JSON object
{"changed": [...]} listing what it created or modified; nothing when all exists.

Also the compute hosts' turn (edge.yml, add-node.yml: ``wait_compute_hosts``,
``discover_hosts``, ``enable_drained``) and a removed AP's (remove-node.yml: ``forget``),
each one process where the playbooks ran one `openstack` CLI call (a 2-3 s start each) per
object.
"""
import json
import subprocess
import sys
import time

import openstack
import openstack.exceptions


def password_ok(conn, u):
    """Whether keystone takes the user's password (an unscoped token: no catalog or
    role assignments to compute for a check)."""
    try:
        openstack.connection.Connection(
            auth=dict(auth_url=conn.config.auth["auth_url"], username=u["name"],
                      password=u["password"], user_domain_name="Default"),
            region_name=conn.config.region_name).authorize()
        return True
    except Exception:
        return False


def as_user(user, *argv):
    """Run a service's manage command as its user (its config and logs are its own)."""
    return subprocess.run(["runuser", "-u", user, "--"] + list(argv), check=True,
                          capture_output=True, text=True).stdout


def wait_compute_hosts(conn, spec):
    """The hosts' nova-compute services up: they register when first started."""
    want = set(spec["hosts"])
    deadline = time.monotonic() + spec.get("timeout", 120)
    while True:
        up = {s.host for s in conn.compute.services(binary="nova-compute")
              if s.binary == "nova-compute" and s.state == "up"}
        if want <= up:
            return
        if time.monotonic() > deadline:
            sys.exit("nova-compute not up after %ds on: %s (journalctl -u nova-compute "
                     "there)" % (spec.get("timeout", 120), ", ".join(sorted(want - up))))
        time.sleep(2)


# The reason remove-node's drain (mec_drain_node.py) disables a host's nova-compute with.
DRAIN_REASON = "draining: leaving the cloud"


def enable_drained(conn, hosts, changed):
    """add-node.yml on a host a remove-node.yml run disabled and did not finish (its
    drain failed): the host is wanted back, so nova schedules on it again. A host an
    admin disabled for another reason stays disabled."""
    for svc in conn.compute.services(binary="nova-compute"):
        if (svc.host in hosts and svc.status == "disabled"
                and (svc.disabled_reason or "") == DRAIN_REASON):
            conn.compute.enable_service(svc)
            changed.append("nova-compute on %s enabled" % svc.host)


def forget(conn, spec, changed):
    """A removed AP's compute service, network agents, volume services and zone, after
    its services were stopped (a running nova-compute would register again)."""
    host = spec["host"]
    for agg in conn.compute.aggregates():
        if host in (agg.hosts or []):
            agg = conn.compute.remove_host_from_aggregate(agg, host)
            changed.append("host %s out of %s" % (host, agg.name))
        if agg.name == spec["aggregate"] and not agg.hosts:
            conn.compute.delete_aggregate(agg)
            changed.append("aggregate %s" % agg.name)
    for svc in conn.compute.services(binary="nova-compute", host=host):
        if svc.host == host and svc.binary == "nova-compute":
            conn.compute.delete_service(svc)
            changed.append("nova-compute on %s" % host)
    for agent in conn.network.agents(host=host):
        if agent.host == host:
            conn.network.delete_agent(agent)
            changed.append("%s on %s" % (agent.binary, host))
    # cinder's API lists services but cannot delete them; cinder-manage can (one start).
    resp = conn.block_storage.get("/os-services?binary=cinder-volume")
    openstack.exceptions.raise_from_response(resp)
    for svc in resp.json()["services"]:
        if svc["host"].split("@")[0] == host:
            as_user("cinder", "cinder-manage", "service", "remove", "cinder-volume", svc["host"])
            changed.append("cinder-volume %s" % svc["host"])


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    changed = []
    conn = None
    for _ in range(30):
        try:
            conn = openstack.connect()
            conn.authorize()
            break
        except Exception:  # keystone still starting
            time.sleep(2)
    else:
        conn = openstack.connect()
    idn = conn.identity

    # Each kind of object is listed once and compared here: the SDK's find_* asks for the
    # name as an ID first (a 404, which keystone logs with a traceback) and then lists,
    # per object and per reference, which made ~80 requests of a run that changed
    # nothing (~8 minutes on a loaded master); this makes about 6.
    if spec.get("roles") or spec.get("projects") or spec.get("users"):
        did = idn.find_domain("default").id
        roles = {r.name: r for r in idn.roles()}
        projects = {p.name: p for p in idn.projects(domain_id=did)}
        users = {u.name: u for u in idn.users(domain_id=did)}
        # (user id, project id, role id) of every project-scoped user assignment
        granted = {(a.user["id"], a.scope["project"]["id"], a.role["id"])
                   for a in idn.role_assignments()
                   if a.user and a.scope and "project" in a.scope}
    # 'service': the role the APIs' keystone_authtoken requires of service tokens
    # (service_token_roles_required = true): nova's calls to neutron carry one.
    for name in spec.get("roles", []):
        if name not in roles:
            roles[name] = idn.create_role(name=name)
            changed.append("role %s" % name)
    for name in spec.get("projects", []):
        if name not in projects:
            projects[name] = idn.create_project(name=name, domain_id=did)
            changed.append("project %s" % name)
    for u in spec.get("users", []):
        user = users.get(u["name"])
        created = user is None
        if created:
            user = idn.create_user(name=u["name"], password=u["password"], domain_id=did)
            changed.append("user %s" % u["name"])
        project = projects[u["project"]]
        for role_name in u["roles"]:
            role = roles[role_name]
            if (user.id, project.id, role.id) not in granted:
                idn.assign_project_role_to_user(project, user, role)
                changed.append("role %s of %s on %s" % (role_name, u["name"], u["project"]))
        if not created and not password_ok(conn, u):
            idn.update_user(user, password=u["password"])
            changed.append("password %s" % u["name"])
    if spec.get("services"):
        services = list(idn.services())
        endpoints = list(idn.endpoints())
    for s in spec.get("services", []):
        svc = next((x for x in services if x.type == s["type"]), None)
        if svc is None:
            svc = idn.create_service(name=s["name"], type=s["type"], description=s["name"])
            changed.append("service %s" % s["name"])
        existing = {e.interface: e for e in endpoints if e.service_id == svc.id}
        for iface in ("public", "internal", "admin"):
            ep = existing.get(iface)
            if ep is None:
                idn.create_endpoint(service_id=svc.id, interface=iface, url=s["url"],
                                    region_id=spec["region"])
                changed.append("endpoint %s %s" % (s["name"], iface))
            elif ep.url != s["url"]:
                idn.update_endpoint(ep, url=s["url"])
                changed.append("endpoint url %s %s" % (s["name"], iface))
    if spec.get("flavors"):
        have = {f.name for f in conn.compute.flavors(is_public=None)}
        for f in spec["flavors"]:
            if f["name"] not in have:
                conn.compute.create_flavor(name=f["name"], vcpus=f["vcpus"], ram=f["ram"],
                                           disk=f["disk"])
                changed.append("flavor %s" % f["name"])
    if "wait_compute_hosts" in spec:
        wait_compute_hosts(conn, spec["wait_compute_hosts"])
        if spec.get("enable_drained"):
            enable_drained(conn, spec["wait_compute_hosts"]["hosts"], changed)
    if "aggregates" in spec:
        services = {s.host for s in conn.compute.services() if s.binary == "nova-compute"}
        aggregates = {x.name: x for x in conn.compute.aggregates()}
        # A host not yet in its zone is new (or back): map it into the cell first (nova
        # refuses an unmapped host in an aggregate); one in its zone was mapped then, and
        # the scheduler's periodic discovery covers the rest.
        new = [h for a in spec["aggregates"] for h in a.get("hosts", []) if h in services
               and h not in (getattr(aggregates.get(a["name"]), "hosts", None) or [])]
        if new and spec.get("discover_hosts"):
            out = as_user("nova", "nova-manage", "cell_v2", "discover_hosts", "--by-service",
                          "--verbose")
            if "Creating host mapping" in out:
                changed.append("host mappings of %s" % ", ".join(new))
        for a in spec["aggregates"]:
            agg = aggregates.get(a["name"])
            if agg is None:
                agg = conn.compute.create_aggregate(name=a["name"],
                                                    availability_zone=a["zone"])
                changed.append("aggregate %s" % a["name"])
            for host in a.get("hosts", []):
                if host in services and host not in (agg.hosts or []):
                    conn.compute.add_host_to_aggregate(agg, host)
                    changed.append("host %s in %s" % (host, a["name"]))
            for host in list(agg.hosts or []):
                if host not in a.get("hosts", []):
                    conn.compute.remove_host_from_aggregate(agg, host)
                    changed.append("host %s out of %s" % (host, a["name"]))
    for n in spec.get("networks", []):
        net = next(iter(conn.network.networks(name=n["name"])), None)
        if net is None:
            net = conn.network.create_network(
                name=n["name"], shared=True, provider_network_type="flat",
                provider_physical_network=n["physnet"], is_router_external=False)
            changed.append("network %s" % n["name"])
        if not list(conn.network.subnets(network_id=net.id)):
            kw = dict(network_id=net.id, name=n["name"] + "-subnet", ip_version=4,
                      cidr=n["cidr"], is_dhcp_enabled=n["dhcp"])
            if n.get("gateway"):
                kw["gateway_ip"] = n["gateway"]
            else:
                kw["gateway_ip"] = None
            conn.network.create_subnet(**kw)
            changed.append("subnet %s" % n["cidr"])
    if "forget" in spec:
        forget(conn, spec["forget"], changed)
    print(json.dumps({"changed": changed}))


if __name__ == "__main__":
    main()
