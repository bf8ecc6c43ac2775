"""Prometheus /metrics of the manager and the node agents, scraped during a
real migration on the embedded edge."""
import threading

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.conftest import client_get
from tests.functional.conftest import wait_op

AGENT_PORT = 9681  # [node_agent] bind_port's default, as the edge runs it


def samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(url, token):
    resp = requests.get(url + "/metrics", timeout=10,
                        headers={"Authorization": "Bearer " + token})
    assert resp.status_code == 200, resp.text
    return samples(resp.text)


def agent_url(edge, ap):
    return "http://%s:%d" % (edge.net.bridge_address(ap), AGENT_PORT)


def agent_token(edge, ap):
    return open(edge.path("nodes", ap, "node-agent.token")).read().strip()


def test_metrics_during_a_migration(edge, admin):
    wait_op(admin, admin.create_service("web", "metered", node="ap-1"))
    svc = admin.service("metered")
    sent = 5
    for _ in range(sent):
        assert client_get(edge, "ap-1", svc["port"])["status"] == 200
    ran = ("mec_conpaas_operations_total", (("kind", "migrate"), ("result", "succeeded")))
    window = (("kind", "migrate"),)
    hist = "mec_conpaas_migration_freeze_to_switch_seconds"
    before = scrape(edge.manager_url(), admin.token)

    seen, errors, done = [], [], threading.Event()

    def scrape_loop():
        while not done.is_set():
            try:
                seen.append(scrape(edge.manager_url(), admin.token))
            except Exception as e:  # reported below, with the assertion
                errors.append(repr(e))
            done.wait(0.2)
    scraper = threading.Thread(target=scrape_loop)
    scraper.start()
    try:
        op = wait_op(admin, admin.migrate("metered", "ap-3"))
    finally:
        done.set()
        scraper.join(15)
    after = scrape(edge.manager_url(), admin.token)
    assert not errors, errors
    assert any(s.get(("mec_conpaas_operations_in_progress", window)) == 1 for s in seen), \
        "no scrape saw the migration in progress (%d scrapes)" % len(seen)
    assert after[ran] - before.get(ran, 0) == 1
    freeze = [w["freeze_to_switch"] / 1000 for w in op["windows"]]
    assert len(freeze) == 1
    assert after[(hist + "_count", window)] - before.get((hist + "_count", window), 0) == 1
    assert abs(after[(hist + "_sum", window)] - before.get((hist + "_sum", window), 0)
               - freeze[0]) < 1e-6
    nodes = {n["name"]: n for n in admin.nodes()}
    for ap in ("ap-1", "ap-3"):
        lbl = (("node", ap),)
        assert after[("mec_conpaas_node_instance_slots", lbl)] == nodes[ap]["max_instances"]
        assert 0 <= after[("mec_conpaas_node_heartbeat_age_seconds", lbl)] < 6
    assert after[("mec_conpaas_node_instances", (("node", "ap-3"),))] >= 1

    # ap-1's proxy counted the requests its clients sent; each proxy has
    # the moved instance in the tier the manager says.
    tiers = admin.service("metered")["tiers"]
    lbl = (("service", "metered"), ("service_id", svc["id"]))
    ap1 = scrape(agent_url(edge, "ap-1"), agent_token(edge, "ap-1"))
    assert ap1[("mec_conpaas_proxy_up", ())] == 1
    assert ap1[("mec_conpaas_proxy_requests_total", lbl)] >= sent
    assert ap1[("mec_conpaas_proxy_responses_total", (("code", "2xx"),) + lbl)] >= sent
    for ap, scraped in (("ap-1", ap1), ("ap-3", scrape(agent_url(edge, "ap-3"),
                                                       agent_token(edge, "ap-3")))):
        [tier] = tiers[ap].values()
        tier = "near" if tier == "local" else "far"
        assert scraped[("mec_conpaas_proxy_servers_up", lbl + (("tier", tier),))] == 1
    assert 0 <= ap1[("mec_conpaas_node_heartbeat_age_seconds", ())] < 6
    assert scraped[("mec_conpaas_node_instances", ())] >= 1
    # Protected as the rest of each API is.
    assert requests.get(agent_url(edge, "ap-1") + "/metrics", timeout=10).status_code == 401
    assert requests.get(agent_url(edge, "ap-1") + "/metrics", timeout=10, headers={
        "Authorization": "Bearer " + admin.token}).status_code == 401
    assert requests.get(edge.manager_url() + "/metrics", timeout=10).status_code == 401
    wait_op(admin, admin.delete_service("metered"))
