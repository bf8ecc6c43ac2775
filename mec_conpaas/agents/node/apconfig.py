"""A joined node's allocation, written into its access point.

A flashed Pi is built before anyone knows which number it will get, so its
hostapd, dnsmasq, Wi-Fi address, instance bridge and cinder zone hold the
image's defaults until it joins.  The manager's answer
(``allocation.json``: number, instance network, client subnet, channel,
zone) then has to reach those files, or two flashed Pis would hand out the
same subnet on the same channel.  Each renderer takes a file's current text
and returns it with only the allocated values changed, so that what first
boot wrote from the settings file (SSID, passphrase, country) and what the
roles wrote stays; ``apply`` writes the files that changed and moves the
live addresses and services after them, so the next boot needs nothing.

The files are the ones roles/wifi_ap and roles/mec_conpaas_node write
(``[join] apply_allocation_to``); a node whose networks are fixed by a
playbook has none configured and nothing here runs.
"""
import ipaddress
import logging
import os
import re
import subprocess

LOG = logging.getLogger(__name__)

#: Services to restart after their file changed (only if they run:
#: ``try-restart``, so a node without a radio or not yet enrolled in
#: OpenStack starts nothing it did not run).
SERVICES = {"hostapd": "hostapd.service", "dnsmasq": "dnsmasq.service",
            "cinder": "cinder-volume.service"}


def _set_lines(text, pairs, sep="=", append=True):
    """``text`` with the line of each key set to ``key<sep>value`` (the
    first such line; appended when missing), every other line kept."""
    lines = text.splitlines()
    done = set()
    for i, line in enumerate(lines):
        for key, value in pairs.items():
            if key in done:
                continue
            if re.match(r"^\s*" + re.escape(key) + r"\s*" + re.escape(sep.strip()),
                        line):
                lines[i] = "%s%s%s" % (key, sep, value)
                done.add(key)
    if append:
        lines += ["%s%s%s" % (k, sep, v) for k, v in pairs.items() if k not in done]
    return "\n".join(lines) + "\n"


def ap_address(alloc):
    """The access point's own address in its client subnet (the first host,
    as the playbooks' ``wifi_ap_address`` 10.42.N.1), with its prefix."""
    net = ipaddress.IPv4Network(alloc["client_network"])
    return ipaddress.IPv4Interface((next(net.hosts()), net.prefixlen))


def dhcp_range(alloc):
    """.100-.199 of a /24 (roles/wifi_ap's range); in a smaller subnet every
    address after the access point's."""
    hosts = list(ipaddress.IPv4Network(alloc["client_network"]).hosts())
    if len(hosts) >= 199:
        return hosts[99], hosts[198]
    return hosts[1], hosts[-1]


def hostapd(text, alloc):
    channel = int(alloc["wifi_channel"])
    return _set_lines(text, {"channel": channel,
                             "hw_mode": "a" if channel >= 36 else "g"})


def dnsmasq(text, alloc):
    addr = ap_address(alloc).ip
    start, end = dhcp_range(alloc)
    m = re.search(r"^\s*dhcp-range\s*=\s*[^,\n]+,[^,\n]+,([^,\n]+)\s*$", text, re.M)
    lease = m.group(1).strip() if m else "2h"
    text = _set_lines(text, {"dhcp-range": "%s,%s,%s" % (start, end, lease)})
    # Two dhcp-option lines, told apart by their option name.
    for option in ("router", "dns-server"):
        text = _set_lines(text, {"dhcp-option=option:%s," % option: addr}, sep="")
    return text


def interface(text, alloc):
    """ifupdown's stanza of the Wi-Fi interface (roles/wifi_ap)."""
    return re.sub(r"^(\s*address\s+)\S+", lambda m: m.group(1) + str(ap_address(alloc)),
                  text, count=1, flags=re.M)


def interface_name(text):
    m = re.search(r"^\s*iface\s+(\S+)\s+inet\s+static", text, re.M)
    return m.group(1) if m else None


def bridge_address(alloc):
    net = ipaddress.IPv4Network(alloc["instance_network"])
    return ipaddress.IPv4Interface((next(net.hosts()), net.prefixlen))


def bridge_mac(alloc):
    """The bridge's fixed MAC, as roles/mec_conpaas_node derives it from the
    instance network (a bridge otherwise takes its ports' MACs)."""
    octets = str(ipaddress.IPv4Network(alloc["instance_network"]).network_address).split(".")
    return "02:4d:45:43:%02x:%02x" % (int(octets[1]), int(octets[2]))


def network_script(text, alloc):
    """roles/mec_conpaas_node's mec-conpaas-network: the bridge's address
    and MAC, read at every boot."""
    text = re.sub(r"^ADDRESS=\S*", "ADDRESS=%s" % bridge_address(alloc), text,
                  count=1, flags=re.M)
    return re.sub(r"^MAC=\S*", "MAC=%s" % bridge_mac(alloc), text, count=1, flags=re.M)


def bridge_name(text):
    m = re.search(r"^BRIDGE=(\S+)", text, re.M)
    return m.group(1) if m else None


def cinder(text, alloc):
    """cinder-volume's zone (nova's is the controller's host aggregate)."""
    zone = alloc.get("availability_zone")
    if not zone:
        return text
    # Not appended when missing: the end of the file is another section.
    return _set_lines(text, {"storage_availability_zone": zone}, sep=" = ", append=False)


RENDERERS = {"hostapd": hostapd, "dnsmasq": dnsmasq, "interface": interface,
             "network": network_script, "cinder": cinder}


def render(files, alloc):
    """{kind: (path, old text, new text)} for every configured file that
    exists; a kind this module does not know is the admin's to fix."""
    out = {}
    for kind, path in files.items():
        if kind not in RENDERERS:
            raise ValueError("[join] apply_allocation_to: unknown file kind %r (one "
                             "of %s)" % (kind, ", ".join(sorted(RENDERERS))))
        try:
            with open(path) as f:
                old = f.read()
        except FileNotFoundError:
            LOG.info("allocation: no %s (%s) on this node, skipped", path, kind)
            continue
        out[kind] = (path, old, RENDERERS[kind](old, alloc))
    return out


def _write(path, text):
    """Atomically, keeping the file's mode and owner (hostapd.conf is 0600:
    it holds the passphrase)."""
    st = os.stat(path)
    tmp = path + ".mec-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o7777)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def _run(*cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        LOG.warning("allocation: %s failed: %s", " ".join(cmd), res.stderr.strip())
    return res.returncode == 0


def _readdress(dev, address, mac=None):
    """The live interface gets the allocated address instead of the image's."""
    if not os.path.exists("/sys/class/net/%s" % dev):
        return
    if mac:
        _run("ip", "link", "set", "dev", dev, "address", mac)
    _run("ip", "-4", "addr", "flush", "dev", dev, "scope", "global")
    _run("ip", "addr", "replace", str(address), "dev", dev)


def apply(files, alloc, live=True):
    """Write the allocation into ``files`` ({kind: path}) and, with
    ``live``, move the interfaces' addresses and restart the services.
    Returns the kinds whose file changed (nothing on every later boot)."""
    changed = []
    for kind, (path, old, new) in render(files, alloc).items():
        if new == old:
            continue
        _write(path, new)
        changed.append(kind)
        LOG.info("allocation %s written into %s", alloc.get("number"), path)
        if not live:
            continue
        if kind == "interface" and interface_name(new):
            _readdress(interface_name(new), ap_address(alloc))
        elif kind == "network" and bridge_name(new):
            _readdress(bridge_name(new), bridge_address(alloc), bridge_mac(alloc))
    units = [SERVICES[k] for k in changed if k in SERVICES]
    if units and live:
        _run("systemctl", "try-restart", *units)
    return changed
