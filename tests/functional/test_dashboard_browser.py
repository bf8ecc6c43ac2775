"""The web dashboard in a real browser (Debian's chromium through
chromium-driver) against the embedded edge: a tenant logs in, sees the
three access points, creates a service with a bundle upload, migrates it
to ap-3 with the page's own control and sees the move, drags it to ap-2,
scales it, deletes it; another tenant's service never shows.  A Wi-Fi
user of the service at ap-1 shows there as a count on the tenant's page
(no name), and at ap-2 after a handover; on an admin's page users show by
name, and one moving from ap-1 to ap-2 moves on the map without a reload.  With
keystone (the real keystone of tests/unit/test_keystone.py; no edge
needed), people sign in with user, password and project: a project's
member sees its services only, the keystone admin every project's.

Screenshots of every step go to $MEC_TEST_ARTIFACTS/dashboard
(default /tmp/mec-test-artifacts/dashboard; the keystone test's to
dashboard-keystone beside it), not to the repository.
"""
import hashlib
import os
import re
import shutil
import time

import pytest

from mec_conpaas.edge import browser
from mec_conpaas.edge import loadgen
from mec_conpaas.edge import users as users_mod
from mec_conpaas.manager import service as service_mod
from tests.functional.conftest import Load
from tests.functional.conftest import new_tenant
from tests.functional.conftest import wait_op
from tests.unit.test_keystone import PASSWORD
from tests.unit.test_keystone import bed  # noqa: F401  (fixture: keystone + manager)

ARTIFACTS = os.path.join(os.environ.get("MEC_TEST_ARTIFACTS", "/tmp/mec-test-artifacts"),
                         "dashboard")
pytestmark = pytest.mark.skipif(
    not browser.available(),
    reason="needs Debian's chromium and chromium-driver (tools/install-deps.sh)")


class Page:
    def __init__(self, driver, url, artifacts=ARTIFACTS):
        self.driver = driver
        self.url = url
        self.shots = 0
        self.artifacts = artifacts
        shutil.rmtree(artifacts, ignore_errors=True)  # this run's only
        os.makedirs(artifacts)

    def shot(self, name):
        self.shots += 1
        self.driver.save_screenshot(os.path.join(self.artifacts, "%02d-%s.png" % (
            self.shots, name)))

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def until(self, what, predicate, timeout=120, interval=0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(interval)
        self.shot("timeout")
        pytest.fail("the page never showed %s" % what)

    def instances(self, service):
        """(node, state) of the service's instances on the map."""
        return sorted(tuple(x) for x in self.js(
            "return Array.from(document.querySelectorAll("
            "'#map g.inst[data-service=\"' + arguments[0] + '\"]'))"
            ".map(e => [e.dataset.node, e.dataset.state]);", service))

    def users(self, ap):
        """(count, names) of the Wi-Fi users the map shows at ``ap``: names
        from the markers (admins), none to tenants."""
        return tuple(self.js(
            "const row = document.querySelector("
            "'#map g.ap[data-node=\"' + arguments[0] + '\"] g.users');"
            "return row ? [Number(row.dataset.count),"
            " row.dataset.users.split(' ').filter(x => x).sort()] : [-1, []];", ap))

    def card(self, service, selector=""):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(
            By.CSS_SELECTOR, '.card.service[data-service="%s"] %s' % (service, selector))

    def drag(self, source, target):
        """Drag with the mouse (pointer events); the map is redrawn on every
        update, so an element found just before one is found again."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        for _ in range(5):
            try:
                ActionChains(self.driver).click_and_hold(
                    self.driver.find_element(By.CSS_SELECTOR, source)).move_by_offset(
                    5, 5).move_to_element(self.driver.find_element(
                        By.CSS_SELECTOR, target)).release().perform()
                return
            except StaleElementReferenceException:
                continue
        pytest.fail("could not drag %s onto %s" % (source, target))

    def click_on_map(self, selector):
        """Click with the mouse where ``selector`` is on the map: the map
        redraws its children at every update, so the click is aimed at
        the map (never replaced) at that element's place."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        dx, dy = self.js(
            "const m = document.getElementById('map').getBoundingClientRect(),"
            " e = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return [e.x + e.width / 2 - (m.x + m.width / 2),"
            " e.y + e.height / 2 - (m.y + m.height / 2)];", selector)
        ActionChains(self.driver).move_to_element_with_offset(
            self.driver.find_element(By.ID, "map"), int(dx), int(dy)).click().perform()

    def login(self, token):
        from selenium.webdriver.common.by import By
        self.driver.get(self.url + "/dashboard")
        self.shot("login")
        self.driver.find_element(By.ID, "login-token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#login-form button").click()

    def keystone_login(self, user, password, project):
        """The form as /dashboard/login-methods makes it: no token field."""
        from selenium.webdriver.common.by import By
        self.driver.get(self.url + "/dashboard")
        self.until("the keystone form", lambda: self.js(
            "const k = document.getElementById('login-keystone'),"
            " t = document.getElementById('login-token-field');"
            " return !!(k && t && !k.hidden && t.hidden);"))
        for field, value in (("login-user", user), ("login-password", password),
                             ("login-project", project)):
            self.driver.find_element(By.ID, field).clear()
            self.driver.find_element(By.ID, field).send_keys(value)
        self.shot("keystone-login-" + user)
        self.driver.find_element(By.CSS_SELECTOR, "#login-form button").click()

    def services(self):
        return sorted(self.js("return Array.from(document.querySelectorAll("
                              "'.card.service')).map(e => e.dataset.service)"))


@pytest.fixture
def users(edge):
    """The edge's emulated Wi-Fi users; every one made here removed after."""
    made = users_mod.for_edge(edge)
    yield made
    for u in made.list():
        made.remove(u["user"])


@pytest.fixture
def page(edge):
    driver = browser.start(edge.manager_url())
    try:
        yield Page(driver, edge.manager_url())
    finally:
        driver.quit()


def test_dashboard_flow_in_a_browser(edge, admin, page, users, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    bundle = tmp_path / "webcounter.tar.gz"
    bundle.write_bytes(service_mod.build_sample_bundle())
    # Another tenant's service, which the tenant below must never see.
    hidden = admin.create_service("web", "admin-only", node="ap-2")
    tenant = new_tenant(edge, "browser")

    page.login(tenant.token)
    page.until("three access points", lambda: len(page.js(
        "return document.querySelectorAll('#map g.ap')")) == 3)
    assert sorted(page.js("return Array.from(document.querySelectorAll('#map g.ap'))"
                          ".map(e => e.dataset.node)")) == ["ap-1", "ap-2", "ap-3"]
    # Every script and style came from the manager (no route elsewhere).
    origins = page.js("return performance.getEntriesByType('resource')"
                      ".map(e => new URL(e.name).origin)")
    assert set(origins) <= {edge.manager_url()}, origins
    # The backbone links, with the topology's latencies.
    links = admin.request("GET", "/dashboard/state")["links"]
    assert links
    page.until("the links and their latencies", lambda: sorted(page.js(
        "return Array.from(document.querySelectorAll('#map text.latency'))"
        ".map(e => e.textContent)")) == sorted("%g ms" % k["latency_ms"] for k in links))
    page.shot("map")

    form = page.driver.find_element(By.ID, "create-form")
    form.find_element(By.NAME, "name").send_keys("webui")
    Select(form.find_element(By.NAME, "type")).select_by_value("web")
    form.find_element(By.NAME, "bundle").send_keys(str(bundle))
    Select(form.find_element(By.NAME, "node")).select_by_value("ap-1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    page.until("the new service on ap-1",
               lambda: page.instances("webui") == [("ap-1", "ACTIVE")])
    page.shot("created-on-ap-1")
    svc = tenant.service("webui")
    assert svc["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert [i["node"] for i in svc["instances"]] == ["ap-1"]
    # Its endpoint on its card; ap-1's use out of its slots, as the API has it.
    assert "endpoint :%d" % svc["port"] in page.card("webui", ".meta").text
    ap1 = next(n for n in admin.request("GET", "/dashboard/state")["nodes"]
               if n["name"] == "ap-1")
    page.until("ap-1's use", lambda: "%d/%d instances" % (ap1["used"], ap1["max_instances"])
               in page.driver.find_element(By.CSS_SELECTOR, '#map g.ap[data-node="ap-1"]').text)

    # A Wi-Fi user of the service at ap-1: the tenant sees how many of its
    # users are there, never who (the fixed users cl-N use nothing of it).
    users.attach("walker", "ap-1")
    load = Load(edge, None, svc["port"], interval=0.2, netns=users.netns("walker"),
                url="http://%s:%d/" % (edge.net.user_endpoint(), svc["port"]))
    try:
        page.until("the tenant's user at ap-1", lambda: page.users("ap-1") == (1, []))
        page.shot("tenant-user-at-ap-1")
        users.attach("walker", "ap-2")  # a handover; it keeps using the service
        page.until("the tenant's user at ap-2", lambda: (
            page.users("ap-1"), page.users("ap-2")) == ((0, []), (1, [])))
        page.shot("tenant-user-at-ap-2")
    finally:
        sent = loadgen.summarize(load.stop())
    assert sent["failed"] == 0, sent
    assert "walker" not in page.driver.page_source

    # The API's refusal is shown in place, and the form keeps what was typed.
    form.find_element(By.NAME, "name").send_keys("webui")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = page.until("the API's error", lambda: form.find_element(
        By.CSS_SELECTOR, ".error").text)
    assert "a service named 'webui' exists already" in error
    assert form.find_element(By.NAME, "name").get_attribute("value") == "webui"
    page.shot("create-refused-in-place")

    # Migrate with the card's own control; follow the map meanwhile.
    Select(page.card("webui", "select[name=to]")).select_by_value("ap-3")
    page.card("webui", "button.migrate").click()
    seen, shot_moving = [], False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        now = page.instances("webui")
        if not seen or seen[-1] != now:
            seen.append(now)
        if not shot_moving and {n for n, _ in now} == {"ap-1", "ap-3"}:
            page.shot("migrating")
            shot_moving = True
        if now == [("ap-3", "ACTIVE")] and page.card("webui").get_attribute(
                "data-state") == "RUNNING":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the move never completed on the page: %s" % seen)
    page.shot("migrated-to-ap-3")
    # The move was seen while it happened: the new instance on ap-3 beside
    # the one on ap-1 (make-before-break), then ap-1's gone.
    assert any({n for n, _ in s} == {"ap-1", "ap-3"} for s in seen), seen
    assert tenant.service("webui")["home_node"] == "ap-3"
    # The migration's entry: done, with its critical window(s) as the API has them.
    op = next(o for o in tenant.operations() if o["kind"] == "migrate")
    windows = [w["freeze_to_switch"] for w in op["windows"]]
    assert windows, op
    entry = page.until("the migration's critical window", lambda: page.js(
        "const li = document.querySelector('#operations li[data-op=\"' + arguments[0]"
        " + '\"]'); return li && li.dataset.state === 'SUCCEEDED' && li.textContent;",
        op["id"]))
    shown = entry.split("critical window ", 1)[1]
    assert [float(x) for x in re.findall(r"([0-9.]+) ms", shown)] == windows, entry

    # Or drag the instance onto another access point.
    page.drag('#map g.inst[data-service="webui"]', '#map g.ap[data-node="ap-2"] rect.box')
    page.until("the move to ap-2 by drag",
               lambda: page.instances("webui") == [("ap-2", "ACTIVE")]
               and page.card("webui").get_attribute("data-state") == "RUNNING")
    page.shot("dragged-to-ap-2")
    assert tenant.service("webui")["home_node"] == "ap-2"

    count = page.card("webui", "input[name=count]")
    count.clear()
    count.send_keys("2")
    page.card("webui", "button.scale").click()
    page.until("two instances", lambda: [s for _, s in page.instances("webui")]
               == ["ACTIVE", "ACTIVE"])
    page.shot("scaled-to-2")
    assert len(tenant.service("webui")["instances"]) == 2

    page.card("webui", "button.logs").click()
    logs = page.until("the logs", lambda: page.driver.find_element(By.ID, "logs").text)
    assert all("== %s on %s" % (i["id"], i["node"]) in logs
               for i in tenant.service("webui")["instances"]), logs

    page.card("webui", "button.delete").click()
    page.until("the service gone", lambda: not page.js(
        "return document.querySelectorAll('[data-service=\"webui\"]').length"))
    page.shot("deleted")
    assert [s["name"] for s in tenant.services()] == []

    # Tenants: the admin's service exists (and shows to the admin), but
    # never on this tenant's page nor in its API.
    wait_op(admin, hidden)
    time.sleep(1)  # a state event or more after it is RUNNING
    assert "admin-only" not in page.driver.page_source
    assert "admin-only" not in [s["name"] for s in tenant.services()]
    admin_view = admin.request("GET", "/dashboard/state")
    assert "admin-only" in [s["name"] for s in admin_view["services"]]

    # An admin's session shows every tenant's services, and drains and
    # enables a node.
    page.driver.find_element(By.ID, "logout").click()
    page.login(admin.token)
    page.until("the admin's service", lambda: page.instances("admin-only"))

    # An admin sees every user by name at its access point, and a user
    # moving moves on the map, live: the page is not reloaded meanwhile.
    page.until("walker at ap-2", lambda: "walker" in page.users("ap-2")[1])
    page.js("window.mecSameDocument = true;")
    users.attach("rover", "ap-1")
    page.until("rover at ap-1", lambda: "rover" in page.users("ap-1")[1])
    page.click_on_map('#map g.ap[data-node="ap-1"] g.users text.count')
    page.until("ap-1's users listed", lambda: "rover" in page.js(
        "return Array.from(document.querySelectorAll('#map g.ap[data-node=\"ap-1\"] "
        ".name-item')).map(e => e.textContent)"))
    page.shot("admin-rover-at-ap-1")
    users.attach("rover", "ap-2")
    page.until("rover at ap-2", lambda: "rover" in page.users("ap-2")[1]
               and "rover" not in page.users("ap-1")[1])
    assert page.js("return window.mecSameDocument") is True
    page.shot("admin-rover-moved-to-ap-2")

    def as_listed():  # what `mec-conpaas user list` says, AP by AP
        listed = admin.request("GET", "/v1/users")["users"]
        return all(page.users(ap) == (len(names), names) for ap, names in (
            (ap, sorted(u["name"] for u in listed if u["ap"] == ap))
            for ap in ("ap-1", "ap-2", "ap-3")))
    page.until("the users of `user list`", as_listed, timeout=10)
    node = '.card.node[data-node="ap-3"] '
    page.driver.find_element(By.CSS_SELECTOR, node + "input[name=reason]").send_keys(
        "new SD card")
    page.driver.find_element(By.CSS_SELECTOR, node + "button.drain").click()
    page.until("ap-3 drained", lambda: "drained (new SD card)" in page.driver.find_element(
        By.CSS_SELECTOR, node + ".meta").text)
    assert admin.node("ap-3")["schedulable"] is False
    page.shot("admin-drained-ap-3")
    page.driver.find_element(By.CSS_SELECTOR, node + "button.enable").click()
    page.until("ap-3 enabled", lambda: "schedulable" in page.driver.find_element(
        By.CSS_SELECTOR, node + ".meta").text)
    assert admin.node("ap-3")["schedulable"] is True
    wait_op(admin, admin.delete_service("admin-only"))


@pytest.fixture
def keystone_page(bed):  # noqa: F811
    driver = browser.start(bed.url)
    try:
        yield Page(driver, bed.url, ARTIFACTS + "-keystone")
    finally:
        driver.quit()


def test_keystone_sign_in_in_a_browser(bed, keystone_page):  # noqa: F811
    """Where the manager uses keystone the page asks for user, password and
    project, and the manager trades them for a token at keystone."""
    import requests
    page = keystone_page
    bed.heartbeat()
    bed.cli_json("service", "create", "web", "alpha-web", "--no-wait", cloud="alice")
    bed.cli_json("service", "create", "web", "beta-web", "--no-wait", cloud="bob")

    # A wrong password: keystone's refusal, in place, and no session.
    page.keystone_login("alice", "not-" + PASSWORD, "alpha")
    page.until("keystone's refusal", lambda: "keystone refused" in page.js(
        "return document.getElementById('login-error').textContent"))
    assert page.js("return sessionStorage.getItem('mec-token')") is None
    page.shot("keystone-refused")

    # alpha's member sees alpha's service, never beta's, in the page and the API.
    page.keystone_login("alice", PASSWORD, "alpha")
    page.until("alpha's service", lambda: page.services() == ["alpha-web"])
    page.until("the user", lambda: "alice" in page.js(
        "return document.getElementById('who').textContent"))
    token = page.js("return sessionStorage.getItem('mec-token')")
    assert page.js("return sessionStorage.getItem('mec-token-kind')") == "keystone"
    r = requests.get(bed.url + "/v1/services", headers={"X-Auth-Token": token})
    assert [s["name"] for s in r.json()["services"]] == ["alpha-web"]
    assert requests.get(bed.url + "/v1/services/beta-web",
                        headers={"X-Auth-Token": token}).status_code == 404
    assert page.js("return document.getElementById('login-password').value") == ""
    assert "beta-web" not in page.driver.page_source
    page.shot("keystone-alice")

    # The keystone admin sees every project's services.
    from selenium.webdriver.common.by import By
    page.driver.find_element(By.ID, "logout").click()
    page.keystone_login("admin", PASSWORD, "admin")
    page.until("every project's services",
               lambda: page.services() == ["alpha-web", "beta-web"])
    page.shot("keystone-admin")
