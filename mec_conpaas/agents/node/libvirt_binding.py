"""Domains seen through the libvirt binding, for the nova backend
(agents/node/nova.py): nova defines its domains (persistent, a stopped one
is ``SHUTOFF``) and names their interfaces, so its node agent asks libvirtd.

The lxc backend (containers.py) does without the binding, which is ~11 MB
of the agent's resident memory (bench/footprint.py): virsh starts and
destroys its domains, and their state, usage and ports come from the
cgroups libvirt makes and the names their XML sets.
"""
import os
import xml.etree.ElementTree as ET

from mec_conpaas.agents.node import containers


class BindingDomains:
    """Mixed in before ``containers.LibvirtContainers``; the class it is
    mixed into provides ``_domain(instance_id)`` (a virDomain or None)."""

    _conn = None

    def conn(self):
        import libvirt  # only on nodes whose backend is nova
        if self._conn is None or not self._conn.isAlive():
            self._conn = libvirt.open(self.conf.node_agent.libvirt_uri)
        return self._conn

    def _running(self, instance_id):
        return self._domain(instance_id) is not None

    def _state(self, instance_id):
        dom = self._domain(instance_id)
        if dom is None:
            return "STOPPED"
        import libvirt
        state = {libvirt.VIR_DOMAIN_RUNNING: "RUNNING",
                 libvirt.VIR_DOMAIN_PAUSED: "FROZEN"}.get(dom.state()[0], "SHUTOFF")
        if state == "RUNNING" and containers._freezer_state(
                self.domain_name(instance_id)) == "FROZEN":
            state = "FROZEN"
        return state

    def _usage_pid(self, instance_id):
        dom = self._domain(instance_id)
        return dom.ID() if dom is not None else None

    def ports(self):
        """The instances' bridge ports as nova named them in the domain XML,
        ``{ifname: address}``."""
        out = {}
        for entry in os.listdir(self.root):
            meta = self._meta(entry) if not entry.startswith(".") else None
            dom = self._domain(entry) if meta else None
            try:
                desc = ET.fromstring(dom.XMLDesc(0)) if dom is not None else None
            except Exception:  # a domain going away under us
                continue
            for target in desc.iterfind("devices/interface/target") \
                    if desc is not None else ():
                out[target.get("dev")] = meta["address"]
        return out
