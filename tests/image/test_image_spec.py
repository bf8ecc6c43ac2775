"""Image-spec test: open a built image WITHOUT booting it and check what a
careful reviewer would (issue 4).  See conftest.py for which image is used."""

import configparser
import glob
import json
import os
import re
import shlex
import subprocess

import pytest
import yaml
from imagelib import MIB
from imagelib import REPO
from imagelib import needs_role
from imagelib import roles_in
from imagelib import sh
from imagelib import sha256

ERASE_BLOCK = 4 * MIB


# --------------------------------------------------------------- the artifact
def test_artifact_name_checksum_and_manifest(image):
    m = image.manifest
    # NAME.img.xz, or NAME.img for profiles built without compression (xz_level = -1).
    assert os.path.basename(image.artifact) == m["image"]
    assert m["version"] in m["image"]
    assert m["image"].endswith(".img.xz" if m["build_inputs"]["xz_level"] >= 0 else ".img")
    with open(image.artifact + ".sha256") as f:
        recorded, name = f.read().split()
    assert name == os.path.basename(image.artifact)
    assert recorded == sha256(image.artifact) == m["sha256"]
    inputs = m["build_inputs"]
    for key in ("suite", "arch", "mirror", "debootstrap_variant", "base_packages", "roles",
                "repo_commit"):
        assert inputs.get(key), f"manifest build_inputs.{key} missing"
    assert inputs["arch"] == "arm64"
    assert "first_boot" in inputs["roles"]


# ------------------------------------------------------------ partition table
def test_partition_table_is_4mib_aligned(image):
    t = image.table
    assert t["label"] == "dos"
    assert len(image.parts) == 2, image.parts
    for p in image.parts:
        start, size = p["start"] * image.sector, p["size"] * image.sector
        assert start % ERASE_BLOCK == 0, f"{p['node']} starts at {start} B, not 4 MiB aligned"
        assert size % ERASE_BLOCK == 0, f"{p['node']} is {size} B, not a multiple of 4 MiB"
    boot, root = image.parts
    assert boot["type"] == "c" and boot.get("bootable"), boot
    assert root["type"] == "83", root
    assert image.offset(1) + image.size(1) <= image.offset(2)
    assert image.offset(2) + image.size(2) <= os.path.getsize(image.raw)
    assert f"0x{int(t['id'], 16):08x}" == image.manifest["partitions"]["disk_id"]


def _probe(image, n):
    out = sh("blkid", "-p", "-O", image.offset(n), "-S", image.size(n), "-o", "export",
             image.raw).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_filesystem_types_and_labels(image):
    boot, root = _probe(image, 1), _probe(image, 2)
    assert boot["TYPE"] == "vfat" and boot.get("VERSION") == "FAT32", boot
    assert boot["LABEL"] == image.manifest["partitions"]["boot"]["label"]
    assert root["TYPE"] == "ext4", root
    assert root["LABEL"] == image.manifest["partitions"]["root"]["label"]


def test_ext4_geometry_and_clean(image, rootfs):
    out = sh("dumpe2fs", "-h", rootfs.device).stdout
    fields = dict((k.strip(), v.strip()) for k, v in
                  (line.split(":", 1) for line in out.splitlines() if ":" in line))
    assert fields["Block size"] == "4096"
    assert fields["RAID stride"] == "1024"
    assert fields["RAID stripe width"] == "1024"
    assert fields["Filesystem volume name"] == image.manifest["partitions"]["root"]["label"]
    assert subprocess.run(["e2fsck", "-fn", rootfs.device], capture_output=True).returncode == 0


# ----------------------------------------------------------- boot partition
def test_boot_partition_kernel_initrd_cmdline(image):
    files = image.boot_ls()
    kver = image.manifest["kernel"]
    for f in (f"vmlinuz-{kver}", f"initrd.img-{kver}", "config.txt", "cmdline.txt",
              "mec-conpaas.txt.example"):
        assert f in files, f"{f} missing on the boot partition: {files}"
    assert "bcm2837-rpi-3-b.dtb" in files, "no Pi 3 device tree"
    assert "bcm2711-rpi-4-b.dtb" in files, "no Pi 4 device tree"
    assert "start4.elf" in files and "bootcode.bin" in files
    cmdline = shlex.split(image.boot_read("cmdline.txt"))
    assert f"root=PARTUUID={image.partuuid(2)}" in cmdline, cmdline
    assert "cgroup_enable=memory" in cmdline, cmdline
    config = image.boot_read("config.txt")
    assert re.search(r"^arm_64bit=1", config, re.M), "config.txt does not boot 64-bit"
    assert re.search(rf"^kernel=vmlinuz-{re.escape(kver)}$", config, re.M), config
    assert re.search(rf"^initramfs initrd.img-{re.escape(kver)}", config, re.M), config


def test_example_settings_file_is_valid(image, tmp_path, rootfs):
    example = tmp_path / "mec-conpaas.txt"
    example.write_text(image.boot_read("mec-conpaas.txt.example"))
    res = subprocess.run(["python3", rootfs.p("/usr/local/sbin/mec-conpaas-firstboot"), "check",
                          str(example)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- root tree
def test_fstab_by_partuuid(image, rootfs):
    entries = {}
    for line in rootfs.read("/etc/fstab").splitlines():
        f = line.split()
        if f and not f[0].startswith("#"):
            entries[f[1]] = f
    assert entries["/"][0] == f"PARTUUID={image.partuuid(2)}" and entries["/"][2] == "ext4"
    assert entries["/"][5] == "1", "root not fsck'ed at boot"
    assert entries["/boot/firmware"][0] == f"PARTUUID={image.partuuid(1)}"
    assert entries["/boot/firmware"][2] == "vfat"
    # The boot files live on the FAT partition only, not twice.
    assert os.listdir(rootfs.p("/boot/firmware")) == []


def _sysctl_effective(rootfs, key):
    """vm.* as systemd-sysctl computes it: files by name over the sysctl.d dirs,
    /etc overriding same names, later files overriding earlier settings."""
    files = {}
    for d in ("/usr/lib/sysctl.d", "/lib/sysctl.d", "/run/sysctl.d", "/etc/sysctl.d"):
        for f in sorted(glob.glob(rootfs.p(d) + "/*.conf")):
            files[os.path.basename(f)] = os.path.join(d, os.path.basename(f))
    value, source = None, None
    for name in sorted(files):
        try:
            text = rootfs.read(files[name])
        except FileNotFoundError:  # dangling link
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(("#", ";")) or "=" not in line:
                continue
            k, v = (s.strip() for s in line.lstrip("-").split("=", 1))
            if k.replace("/", ".") == key:
                value, source = v, files[name]
    return value, source


def test_swappiness_100_in_sysctl_d(image, rootfs):
    needs_role(image, "edge_tuning")
    value, source = _sysctl_effective(rootfs, "vm.swappiness")
    assert value == "100", f"vm.swappiness effective value {value!r} from {source}"
    assert source.startswith("/etc/sysctl.d/")


def test_cgroup_arguments_survive_kernel_updates(image, rootfs):
    """Debian's raspi-firmware hook rewrites cmdline.txt on every kernel update from
    /etc/default/raspi-extra-cmdline: edge_tuning must have put the arguments there."""
    needs_role(image, "edge_tuning")
    words = rootfs.read("/etc/default/raspi-extra-cmdline").split()
    # The image's own list (image-builder/image-vars.yml): with the cgroup v1
    # hierarchies the node agent's lxc backend freezes and limits instances.
    with open(os.path.join(REPO, "image-builder", "image-vars.yml")) as f:
        wanted = yaml.safe_load(f)["edge_tuning_cmdline_args"]
    assert "systemd.unified_cgroup_hierarchy=0" in wanted
    # Legacy, not hybrid: libvirt's LXC containers register with systemd-machined.
    assert "systemd.legacy_systemd_cgroup_controller=1" in wanted
    assert set(wanted) <= set(words), words
    cmdline = shlex.split(image.boot_read("cmdline.txt"))
    assert set(wanted) <= set(cmdline), cmdline


def test_openstack_my_ip_is_an_address_or_absent(image, rootfs):
    """my_ip is the image's placeholder address (first boot replaces or removes it) or
    absent, never the chroot directory the roles ran against (ansible_host)."""
    needs_role(image, "nova_compute_lxc")
    for f in ("/etc/nova/nova.conf", "/etc/cinder/cinder.conf"):
        if not rootfs.exists(f):
            continue
        for value in re.findall(r"^\s*my_ip\s*=\s*(\S*)", rootfs.read(f), re.M):
            assert re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", value), f"{f}: my_ip = {value!r}"


def test_nova_conf_virt_type_lxc(image, rootfs):
    needs_role(image, "nova_compute_lxc")
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    read = []
    for f in ("/etc/nova/nova.conf", "/etc/nova/nova-compute.conf"):
        if rootfs.exists(f):
            cp.read_string(rootfs.read(f), source=f)
            read.append(f)
    assert "/etc/nova/nova.conf" in read
    assert cp.get("libvirt", "virt_type", fallback=None) == "lxc", read
    assert rootfs.exists("/etc/systemd/system/multi-user.target.wants/nova-compute.service")


def test_only_compute_and_volume_from_openstack(image, rootfs):
    needs_role(image, "nova_compute_lxc")
    needs_role(image, "cinder_volume")
    installed = {p["package"] for p in image.manifest["packages"]}
    assert {"nova-compute", "cinder-volume"} <= installed
    control_plane = {"nova-api", "nova-conductor", "nova-scheduler", "nova-novncproxy",
                     "cinder-api", "cinder-scheduler", "keystone", "glance", "glance-api",
                     "neutron-server", "placement-api", "openstack-dashboard", "heat-api",
                     "mariadb-server", "rabbitmq-server"}
    assert not installed & control_plane, installed & control_plane


def test_openstack_has_placeholder_passwords_and_waits_for_enrollment(image, rootfs):
    """No deployment's secret is in the image: the OpenStack files carry the
    image-vars.yml placeholders (first boot's enrollment replaces them), and the
    units that need them are held back until then."""
    needs_role(image, "nova_compute_lxc")
    needs_role(image, "cinder_volume")
    with open(os.path.join(REPO, "image-builder", "image-vars.yml")) as f:
        placeholders = yaml.safe_load(f)["mec_conpaas_openstack_passwords"]
    fb = json.loads(rootfs.read("/etc/mec-conpaas/firstboot.json"))
    assert fb["password_placeholders"] == placeholders
    text = "".join(rootfs.read(p) for p in fb["placeholder_files"] if rootfs.exists(p))
    for name in ("rabbit", "nova", "placement", "neutron", "cinder_db"):
        assert placeholders[name] in text, f"{name} password placeholder not in the configs"
    for unit in ("nova-compute.service", "neutron-linuxbridge-agent.service",
                 "cinder-volume.service"):
        assert unit in fb["openstack_units"]
        dropin = rootfs.read(f"/etc/systemd/system/{unit}.d/mec-conpaas-enrolled.conf")
        assert "ConditionPathExists=/var/lib/mec-conpaas/openstack.enrolled" in dropin
    assert not rootfs.exists("/var/lib/mec-conpaas/openstack.enrolled")


def test_no_ssh_host_keys(rootfs):
    keys = glob.glob(rootfs.p("/etc/ssh") + "/ssh_host_*")
    assert keys == [], keys


def test_no_password_hash_for_any_account(rootfs):
    for line in rootfs.read("/etc/shadow").splitlines():
        user, pw = line.split(":")[:2]
        assert pw.startswith(("!", "*")), f"{user} can log in with a password (or none)"
    for line in rootfs.read("/etc/passwd").splitlines():
        user, pw = line.split(":")[:2]
        assert pw == "x", f"{user} has a password in /etc/passwd"


def _sshd_first_values(rootfs):
    """sshd semantics: the first value obtained for a keyword wins; Include is
    expanded in place; Match blocks are ignored (they apply to some users only)."""
    values = {}

    def walk(rel):
        in_match = False
        for line in rootfs.read(rel).splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, rest = line.partition(" ")
            key = key.lower()
            if key == "match":
                in_match = True
            if in_match:
                continue
            if key == "include":
                for pat in rest.split():
                    pat = pat if pat.startswith("/") else "/etc/ssh/" + pat
                    for f in sorted(glob.glob(rootfs.p(pat))):
                        walk(f[len(rootfs.path):])
            else:
                values.setdefault(key, rest.strip().lower())

    walk("/etc/ssh/sshd_config")
    return values


def test_sshd_key_only(rootfs):
    v = _sshd_first_values(rootfs)
    assert v.get("passwordauthentication") == "no"
    assert v.get("kbdinteractiveauthentication", "no") == "no"
    assert v.get("permitemptypasswords", "no") == "no"


def test_first_boot_units_enabled(rootfs):
    wants = {
        "sysinit.target.wants": ["mec-conpaas-growroot.service",
                                 "mec-conpaas-ssh-hostkeys.service"],
        "multi-user.target.wants": ["mec-conpaas-firstboot.service",
                                    "mec-conpaas-enroll.service", "ssh.service",
                                    "systemd-networkd.service"],
    }
    for target, units in wants.items():
        for unit in units:
            link = rootfs.p(f"/etc/systemd/system/{target}/{unit}")
            assert os.path.islink(link), f"{unit} not enabled ({target})"
            assert os.path.exists(rootfs.resolve(f"/etc/systemd/system/{target}/{unit}"))
    assert rootfs.read("/etc/machine-id") == "", "machine-id baked into the image"
    assert not rootfs.exists("/var/lib/mec-conpaas/firstboot.done")
    assert not rootfs.exists("/var/lib/mec-conpaas/growroot.done")
    assert not rootfs.exists("/usr/sbin/policy-rc.d"), "build-time policy-rc.d left behind"


def test_backbone_reachable_without_settings(rootfs):
    """Without (valid) settings the backbone still comes up by DHCP: a node with a
    missing or malformed file must stay reachable over SSH."""
    net = rootfs.read("/etc/systemd/network/90-mec-conpaas-backbone-default.network")
    assert "Name=eth0" in net and "DHCP=yes" in net


def test_node_agent_installed(image, rootfs):
    needs_role(image, "mec_conpaas_node")
    assert rootfs.exists("/opt/mec-conpaas/venv/bin/mec-conpaas-node-agent")
    assert rootfs.exists("/etc/mec-conpaas/mec-conpaas.conf")


def test_node_software_ships_its_bytecode(image, rootfs):
    """The venv is installed without bytecode under emulation (minutes of
    qemu-user) and compiled by the build host in finalize: every module of the
    package has a .pyc the image's Python accepts, naming its path on the Pi."""
    needs_role(image, "mec_conpaas_node")
    import importlib.util
    import marshal
    [site] = glob.glob(rootfs.p("/opt/mec-conpaas/venv/lib/python3*/site-packages"))
    sources = glob.glob(os.path.join(site, "mec_conpaas", "**", "*.py"), recursive=True)
    assert len(sources) > 50, site
    tag = os.path.basename(os.path.dirname(site)).replace("python", "cpython-").replace(".", "")
    missing = []
    for src in sources:
        pyc = os.path.join(os.path.dirname(src), "__pycache__",
                           os.path.basename(src)[:-3] + f".{tag}.pyc")
        if not os.path.exists(pyc):
            missing.append(os.path.relpath(src, site))
            continue
        with open(pyc, "rb") as f:
            head = f.read(16)
            code = marshal.loads(f.read()) if head[:4] == importlib.util.MAGIC_NUMBER else None
        if code is not None:  # the build host's Python (same magic) can read it
            assert code.co_filename == "/" + os.path.relpath(src, rootfs.path), code.co_filename
    assert not missing, missing[:10]


def test_node_agent_can_host_with_base_image_on_the_card(image, rootfs):
    """The lxc backend, and the base service image baked in (no debootstrap at
    first boot): an arm64 Debian tree with the Python the service agent runs on."""
    needs_role(image, "mec_conpaas_node")
    import configparser
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(rootfs.read("/etc/mec-conpaas/mec-conpaas.conf"))
    agent = conf["node_agent"]
    assert agent["container_backend"] == "libvirt"
    assert int(agent["max_instances"]) > 0
    base = agent["base_image_path"]
    assert rootfs.exists(f"{base}/.mec-conpaas-image")
    assert rootfs.exists(f"{base}/usr/bin/python3") and rootfs.exists(f"{base}/etc/debian_version")
    # libvirt keeps its own cgroups: systemd-machined cannot be D-Bus activated
    # (roles/first_boot; with it every container start failed: NoMachineForPID).
    activation = "/usr/share/dbus-1/system-services/org.freedesktop.machine1.service"
    assert not rootfs.exists(activation) and rootfs.exists(activation + ".mec-conpaas")
    assert "libvirt-daemon-driver-lxc" in {p["package"] for p in image.manifest["packages"]}


def test_initramfs_small_and_single(image, rootfs):
    kernel = image.manifest["kernel"]
    assert os.listdir(rootfs.p("/lib/modules")) == [kernel]
    assert rootfs.exists(f"/boot/initrd.img-{kernel}")
    conf = rootfs.read("/etc/initramfs-tools/conf.d/mec-conpaas.conf")
    assert "MODULES=list" in conf
    assert not rootfs.exists("/usr/sbin/update-initramfs.distrib"), \
        "update-initramfs still diverted"


def test_manifest_matches_dpkg_inside(image, rootfs):
    out = sh("dpkg-query", f"--admindir={rootfs.p('/var/lib/dpkg')}", "-W",
             "-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n").stdout
    inside = set()
    for line in out.splitlines():
        status, name, ver, arch = line.split("\t")
        if status.strip() != "un":
            inside.add((status.strip(), name, ver, arch))
    manifest = {(p["status"], p["package"], p["version"], p["arch"])
                for p in image.manifest["packages"] if p["status"] != "un"}
    assert inside == manifest, {"only in image": sorted(inside - manifest)[:20],
                                "only in manifest": sorted(manifest - inside)[:20]}
    assert all(s == "ii" for s, *_ in inside), [p for p in inside if p[0] != "ii"][:20]
    kernel_pkg = f"linux-image-{image.manifest['kernel']}"
    assert kernel_pkg in {p[1] for p in inside}
    assert "raspi-firmware" in {p[1] for p in inside}


@pytest.mark.parametrize("role", ["common", "edge_tuning", "wifi_ap", "nova_compute_lxc",
                                  "cinder_volume", "mec_conpaas_node"])
def test_profile_applies_project_roles(image, role):
    """The researcher image (profile edge) is built from all project roles."""
    if image.manifest["profile"] != "edge":
        pytest.skip(f"profile {image.manifest['profile']} is trimmed by definition "
                    "(image-builder/profiles.ini)")
    assert role in roles_in(image)
