"""Entry point for oslo-config-generator (namespace ``mec_conpaas``)."""
from mec_conpaas.conf import api
from mec_conpaas.conf import database
from mec_conpaas.conf import edge
from mec_conpaas.conf import join
from mec_conpaas.conf import liveness
from mec_conpaas.conf import manager
from mec_conpaas.conf import node_agent
from mec_conpaas.conf import openstack
from mec_conpaas.conf import paths
from mec_conpaas.conf import policies
from mec_conpaas.conf import qos


def list_opts():
    grouped = {}
    for module in (paths, api, database, manager, node_agent, edge, openstack, join, qos,
                   policies, liveness):
        grouped.update(module.list_opts())
    return [(group if group == "DEFAULT" else group, opts)
            for group, opts in grouped.items()]
