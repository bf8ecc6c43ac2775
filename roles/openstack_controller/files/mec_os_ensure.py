#!/usr/bin/python3
"""Idempotently ensure OpenStack catalog objects from a JSON spec (MEC-ConPaaS roles).

Usage: mec_os_ensure.py SPEC.json   (cloud taken from OS_CLOUD / clouds.yaml)

One process and one token for everything the openstack_controller role needs (projects,
users, role assignments, services, endpoints, flavors, aggregates / availability zones,
networks), where about 30 `openstack` CLI calls took 37 s. Prints one JSON object
{"changed": [...]} listing what it created or modified; nothing when all exists.
"""
import json
import sys
import time

import openstack


def password_ok(conn, u):
    try:
        openstack.connection.Connection(
            auth=dict(auth_url=conn.config.auth["auth_url"], username=u["name"],
                      password=u["password"], project_name=u["project"],
                      user_domain_name="Default", project_domain_name="Default"),
            region_name=conn.config.region_name).authorize()
        return True
    except Exception:
        return False


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

    def domain_id():
        return idn.find_domain("default").id

    # 'service': the role the APIs' keystone_authtoken requires of service tokens
    # (service_token_roles_required = true): nova's calls to neutron carry one.
    for name in spec.get("roles", []):
        if idn.find_role(name) is None:
            idn.create_role(name=name)
            changed.append("role %s" % name)
    for name in spec.get("projects", []):
        if idn.find_project(name, domain_id=domain_id()) is None:
            idn.create_project(name=name, domain_id=domain_id())
            changed.append("project %s" % name)
    for u in spec.get("users", []):
        user = idn.find_user(u["name"], domain_id=domain_id())
        if user is None:
            user = idn.create_user(name=u["name"], password=u["password"], domain_id=domain_id())
            changed.append("user %s" % u["name"])
        project = idn.find_project(u["project"], domain_id=domain_id())
        for role_name in u["roles"]:
            role = idn.find_role(role_name)
            if not idn.validate_user_has_project_role(project, user, role):
                idn.assign_project_role_to_user(project, user, role)
                changed.append("role %s of %s on %s" % (role_name, u["name"], u["project"]))
        if not password_ok(conn, u):
            idn.update_user(user, password=u["password"])
            changed.append("password %s" % u["name"])
    for s in spec.get("services", []):
        svc = next((x for x in idn.services() if x.type == s["type"]), None)
        if svc is None:
            svc = idn.create_service(name=s["name"], type=s["type"], description=s["name"])
            changed.append("service %s" % s["name"])
        existing = {e.interface: e for e in idn.endpoints(service_id=svc.id)}
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
    if "aggregates" in spec:
        services = {s.host for s in conn.compute.services() if s.binary == "nova-compute"}
        for a in spec["aggregates"]:
            agg = next((x for x in conn.compute.aggregates() if x.name == a["name"]), None)
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
        net = conn.network.find_network(n["name"])
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
    print(json.dumps({"changed": changed}))


if __name__ == "__main__":
    main()
