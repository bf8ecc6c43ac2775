"""A flashed card's settings-file mistakes that do not stop first boot reach
`mec-conpaas node show` (issue 11): the real first-boot script writes them,
the node agent's registration carries them, the manager keeps them, the CLI
shows them.  No image needed."""
import json

import pytest
from oslo_config import cfg

from mec_conpaas.agents.node import joining
from mec_conpaas.api import app as app_mod
from mec_conpaas.cli import nodes as cli_nodes
from mec_conpaas.conf import node_agent
from tests.image.test_firstboot_settings import GOOD
from tests.image.test_firstboot_settings import firstboot
from tests.image.test_firstboot_settings import render
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)
from tests.unit.test_join import _join_body
from tests.unit.test_join import _registration
from tests.unit.test_join import _token


def first_boot(tmp_path, text):
    """first boot's parse + its report of a successful apply, into tmp_path;
    the node agent's configuration as first boot leaves it."""
    mod = firstboot()
    s = dict(mod.DEFAULT_SETTINGS, state_dir=str(tmp_path),
             config_file=str(tmp_path / "mec-conpaas.txt"),
             issue_file=str(tmp_path / "issue.d" / "mec-conpaas-firstboot.issue"))
    _cfg, warnings = mod.parse_report(text)
    mod.report_applied(s, warnings)
    conf = cfg.ConfigOpts()
    node_agent.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("settings_warnings_file", mod.warnings_file(s), group="node_agent")
    return conf, s


def register_and_show(edge, conf, n):  # noqa: F811
    """Join with a token, register as the agent does, and show the node as
    an admin and as a tenant."""
    admin, alice, manager = edge
    flask_app = app_mod.create_app(manager)
    _tid, secret = _token()
    body = _join_body(n)
    code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
    assert code == 200, got
    reg = dict(_registration(body, "192.0.2.1%d" % n),
               settings_warnings=joining.settings_warnings(conf))
    code, got_reg = Api(flask_app, got["credential"])("POST", "/v1/nodes/register", json=reg)
    assert code == 200, got_reg
    code, shown = admin("GET", "/v1/nodes/" + body["name"])
    assert code == 200, shown
    code, tenant_view = alice("GET", "/v1/nodes/" + body["name"])
    assert code == 200, tenant_view
    return shown["node"], tenant_view["node"]


def cli_field(node, field):
    keys, vals = cli_nodes._show(node)
    return dict(zip(keys, vals))[field]


def test_unknown_key_registers_and_node_show_lists_it(edge, tmp_path):  # noqa: F811
    conf, s = first_boot(tmp_path, render(GOOD) + "colour = blue\n")
    issue = open(s["issue_file"]).read()
    assert "unknown setting 'colour' ignored" in issue and "node show" in issue
    node, tenant_node = register_and_show(edge, conf, 1)
    assert len(node["settings_warnings"]) == 1
    assert node["settings_warnings"][0].startswith(
        f"line {len(GOOD) + 1}: unknown setting 'colour' ignored (known: hostname, ")
    assert cli_field(node, "settings_warnings") == node["settings_warnings"][0]
    # The owner's card is the operator's business, not a tenant's.
    assert tenant_node["settings_warnings"] is None


def test_clean_file_shows_none(edge, tmp_path):  # noqa: F811
    conf, s = first_boot(tmp_path, render(GOOD))
    assert json.load(open(s["state_dir"] + "/settings-warnings.json")) == []
    node, _ = register_and_show(edge, conf, 2)
    assert node["settings_warnings"] == []
    assert cli_field(node, "settings_warnings") == ""


@pytest.mark.parametrize("line, error", [
    ("wifi_pasphrase = x", "unknown setting 'wifi_pasphrase': did you mean 'wifi_passphrase'?"),
    ("ssh_authorised_key = x", "did you mean 'ssh_authorized_key'?"),
])
def test_misspelt_known_key_is_an_error(tmp_path, line, error):
    """Ignoring it would leave the default in force (no SSH key, DHCP...)."""
    mod = firstboot()
    with pytest.raises(mod.ConfigError) as e:
        mod.parse_report(render(GOOD) + line + "\n")
    assert any(error in p for p in e.value.problems), e.value.problems


def test_registration_refuses_malformed_and_caps_warnings(edge):  # noqa: F811
    admin, _alice, manager = edge
    flask_app = app_mod.create_app(manager)
    _tid, secret = _token(uses=3)
    answers = {}
    for n, notes in ((3, "not a list"), (4, ["x" * 600] * 60), (5, None)):
        body = _join_body(n)
        got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)[1]
        answers[n] = Api(flask_app, got["credential"])(
            "POST", "/v1/nodes/register",
            json=dict(_registration(body, "192.0.2.9"), settings_warnings=notes))
    assert answers[3][0] == 400, answers[3]
    assert "settings_warnings" in answers[3][1]["error"]["message"]
    assert answers[4][0] == 200, answers[4]
    kept = admin("GET", "/v1/nodes/pi-4")[1]["node"]["settings_warnings"]
    assert len(kept) == 51 and kept[-1] == "... and 10 more"
    assert {len(w) for w in kept[:-1]} == {500}
    # An agent without a card (null): nothing to list.
    assert answers[5][0] == 200, answers[5]
    assert admin("GET", "/v1/nodes/pi-5")[1]["node"]["settings_warnings"] == []
