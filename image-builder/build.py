#!/usr/bin/env python3
"""Build a flashable arm64 Raspberry Pi SD-card image for a MEC-ConPaaS edge node.

Stages (each timed; the timings go into OUT/NAME.build.json):

  preflight   root, free disk, tools; binfmt_misc mounted, qemu-aarch64 enabled
  bootstrap   debootstrap --arch=arm64 from a cached download tarball
  base        kernel, firmware, systemd, ssh (initramfs rebuilds held back)
  packages    the roles' tasks tagged 'packages' only; the tree is then cached
              (cache/layer-*.tar) keyed on everything it depends on, and a
              later build with the same inputs starts from it ('layer')
  roles       the project's Ansible roles through the chroot connection,
              mec_conpaas_image_build=true, then roles/first_boot
  finalize    one initramfs (MODULES=list), cmdline.txt, fstab, no host keys,
              no machine-id, apt cleaned, manifest written
  assemble    FAT32 boot + ext4 root made from directories and written at
              4 MiB-aligned offsets of a DOS-partitioned image file
  compress    NAME.img.xz + NAME.img.xz.sha256

Works without loop partition scanning, without a VFAT driver and without
device-mapper: nothing of the image is ever mounted.

Usage: build.py [--profile edge|ci|base] [--version V] [--keep-root] ...
"""

import argparse
import configparser
import contextlib
import datetime
import glob
import hashlib
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1024 * 1024
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "xz": "xz-utils",
    "update-binfmts": "binfmt-support",
}
BOOT_LABEL = "RASPIFIRM"
ROOT_LABEL = "RASPIROOT"


class BuildError(Exception):
    pass


_JINJA_BLOCK = re.compile(r"{{(.*?)}}|{%(.*?)%}", re.S)
_NAME = re.compile(r"(?<![.\w'\"])[A-Za-z_]\w*")
_BARE_KEYS = ("when", "loop", "until", "changed_when", "failed_when")


def _yaml():
    try:
        import yaml  # ansible's dependency
    except ImportError:
        raise BuildError("PyYAML is missing: run build.py with the python of the venv "
                         "that has ansible (tools/ci/image.sh makes one)") from None
    return yaml


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _jinja_names(value):
    """Identifiers inside the Jinja blocks of every string in ``value``."""
    names = set()
    for s in _strings(value):
        for m in _JINJA_BLOCK.finditer(s):
            names |= set(_NAME.findall(m.group(1) or m.group(2)))
    return names


def _bare_names(task):
    """Identifiers of a task's bare expressions (``when: x == 'y'``)."""
    names = set()
    for key in _BARE_KEYS:
        for s in _strings(task.get(key)):
            names |= set(_NAME.findall(re.sub(r"'[^']*'|\"[^\"]*\"", "", s)))
    return names


def _tags(task):
    tags = task.get("tags") or []
    return {tags} if isinstance(tags, str) else set(tags)


def _tasks(doc):
    """Every task of a task file, blocks flattened (a block's tags and when
    are its tasks' too)."""
    for t in doc or []:
        if not isinstance(t, dict):
            continue
        inner = [x for k in ("block", "rescue", "always") for x in t.get(k) or []]
        if inner:
            for x in _tasks(inner):
                x = dict(x)
                x["tags"] = sorted(_tags(x) | _tags(t))
                x["when"] = [w for w in (t.get("when"), x.get("when")) if w]
                yield x
        else:
            yield t


def _extra_vars(ev, yaml):
    """The variables of one ``-e`` argument (@file, YAML/JSON, or k=v words)."""
    if ev.startswith("@"):
        with open(ev[1:]) as f:
            return yaml.safe_load(f) or {}
    try:
        v = yaml.safe_load(ev)
        if isinstance(v, dict):
            return v
    except yaml.YAMLError:
        pass
    return dict(w.split("=", 1) for w in shlex.split(ev) if "=" in w)


def log(msg):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[image-builder {stamp}] {msg}", flush=True)


def run(cmd, check=True, capture=False, env=None, **kw):
    log("+ " + " ".join(shlex.quote(str(c)) for c in cmd))
    res = subprocess.run(
        [str(c) for c in cmd], check=False, text=True, env=env,
        stdin=None if "input" in kw else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None, **kw)
    if check and res.returncode != 0:
        err = (res.stderr or "")[-4000:] if capture else ""
        raise BuildError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n{err}")
    return res


def load_profile(name, path=os.path.join(HERE, "profiles.ini")):
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(path)
    if not cp.has_section(name):
        raise BuildError(f"unknown profile {name!r}; known: {', '.join(cp.sections())}")
    prof = dict(cp.items(name))
    for key in ("debootstrap_include", "base_packages", "roles", "initramfs_modules",
                "components"):
        prof[key] = prof.get(key, "").split()
    for key in ("erase_block_mib", "first_partition_mib", "boot_size_mib", "root_slack_mib",
                "xz_level", "min_free_gib", "package_layers_kept"):
        prof[key] = int(prof[key])
    prof["package_layer"] = cp.getboolean(name, "package_layer")
    prof["name"] = name
    return prof


def host_mirror():
    """First Debian archive URI configured in the host's apt sources."""
    files = ["/etc/apt/sources.list"]
    d = "/etc/apt/sources.list.d"
    if os.path.isdir(d):
        files += sorted(os.path.join(d, f) for f in os.listdir(d))
    for f in files:
        if not os.path.isfile(f):
            continue
        text = open(f, encoding="utf-8", errors="replace").read()
        for m in re.finditer(r"^(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            uri = m.group(1)
            if "security" in uri or not uri.startswith("http"):
                continue
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def git(*args):
    res = subprocess.run(["git", "-C", REPO, *args], text=True, capture_output=True)
    return res.stdout.strip() if res.returncode == 0 else ""


def default_version():
    cp = configparser.ConfigParser()
    cp.read(os.path.join(REPO, "setup.cfg"))
    base = cp.get("metadata", "version", fallback="0.0.0")
    rev = git("rev-parse", "--short=10", "HEAD") or "nogit"
    dirty = "-dirty" if git("status", "--porcelain", "--", "image-builder", "roles") else ""
    return f"{base}-g{rev}{dirty}"


def round_up(n, unit):
    return -(-n // unit) * unit


class Builder:
    def __init__(self, args):
        self.args = args
        self.prof = load_profile(args.profile)
        self.prof["mirror"] = args.mirror or self.prof.get("mirror") or host_mirror()
        self.version = args.version or default_version()
        self.name = f"mec-conpaas-edge-{self.prof['name']}-{self.version}-{self.prof['arch']}"
        self.work = os.path.abspath(args.work_dir)
        self.out = os.path.abspath(args.out_dir)
        self.cache = os.path.join(self.work, "cache")
        self.bdir = os.path.join(self.work, self.prof["name"])
        self.root = os.path.join(self.bdir, "root")
        self.mounts = []
        self.timings = {}
        self.t0 = time.monotonic()
        # Disk identifier of the DOS label: PARTUUIDs are DISKID-01 / DISKID-02.
        self.disk_id = args.disk_id or f"{uuid.uuid4().int & 0xFFFFFFFF:08x}"
        self.boot_partuuid = f"{self.disk_id}-01"
        self.root_partuuid = f"{self.disk_id}-02"
        self.kernel_version = None
        self.result = {}

    # ---------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def stage(self, name):
        log(f"=== stage {name}")
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - t, 1)
            # The machine's load over the stage (1-min average at its end): shared
            # build hosts make stage times incomparable without it.
            self.result.setdefault("loadavg_1min_at_stage_end", {})[name] = \
                round(os.getloadavg()[0], 2)
            log(f"=== stage {name} done in {self.timings[name]} s")

    def chroot(self, *cmd, check=True, capture=False, env_extra=None):
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "DEBCONF_NONINTERACTIVE_SEEN": "true",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "HOME": "/root",
        }
        env.update(env_extra or {})
        return run(["chroot", self.root, *cmd], check=check, capture=capture, env=env)

    def mount(self, src, target, *opts):
        os.makedirs(target, exist_ok=True)
        run(["mount", *opts, src, target])
        self.mounts.append(target)

    def mount_chroot_fs(self):
        r = self.root
        self.mount("proc", f"{r}/proc", "-t", "proc")
        self.mount("sysfs", f"{r}/sys", "-t", "sysfs")
        self.mount("/dev", f"{r}/dev", "--bind")
        self.mount("devpts", f"{r}/dev/pts", "-t", "devpts",
                   "-o", "gid=5,mode=620,newinstance,ptmxmode=0666")
        self.mount("tmpfs", f"{r}/run", "-t", "tmpfs", "-o", "mode=755")
        # What systemd would create at boot and roles validate against (sshd -t).
        os.makedirs(f"{r}/run/sshd", mode=0o755, exist_ok=True)
        os.makedirs(f"{r}/run/lock", mode=0o1777, exist_ok=True)
        archives = os.path.join(self.cache, "apt-archives")
        os.makedirs(os.path.join(archives, "partial"), exist_ok=True)
        self.mount(archives, f"{r}/var/cache/apt/archives", "--bind")

    def fresh_root(self):
        """An empty root directory (an earlier build's tree unmounted and removed)."""
        if os.path.exists(self.root):
            self.umount_all()
            shutil.rmtree(self.root)
        os.makedirs(self.root)

    def save_tree(self, path):
        """Tar the root tree (nothing may be mounted in it) to ``path``, atomically."""
        run(["tar", "-C", self.root, "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "-cf", path + ".partial", "."])
        os.rename(path + ".partial", path)

    def load_tree(self, path):
        run(["tar", "-C", self.root, "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "-xpf", path])

    def kill_chroot_processes(self):
        """Kill processes whose root directory is our chroot (we started them)."""
        real = os.path.realpath(self.root)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.path.realpath(f"/proc/{pid}/root") == real:
                    log(f"killing leftover chroot process {pid}")
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass

    def umount_all(self):
        self.kill_chroot_processes()
        for target in reversed(self.mounts):
            if subprocess.run(["umount", target]).returncode != 0:
                subprocess.run(["umount", "-l", target])
        self.mounts = []
        # Anything else left mounted below the root (e.g. an interrupted earlier run).
        real = os.path.realpath(self.root)
        with open("/proc/self/mounts") as f:
            left = [ln.split()[1] for ln in f if ln.split()[1].startswith(real + "/")]
        for target in sorted(left, reverse=True):
            subprocess.run(["umount", "-l", target])

    # ----------------------------------------------------------------- stages
    def preflight(self):
        if os.geteuid() != 0:
            raise BuildError("image-builder must run as root (debootstrap, chroot, mount).")
        missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
        if missing:
            raise BuildError("missing host packages: " + " ".join(missing) +
                             "\n  apt-get install --no-install-recommends " + " ".join(missing))
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        st = os.statvfs(self.work)
        free_gib = st.f_bavail * st.f_frsize / 1024 ** 3
        need = self.prof["min_free_gib"]
        if free_gib < need:
            raise BuildError(f"not enough free disk in {self.work}: {free_gib:.1f} GiB free, "
                             f"{need} GiB needed (profile {self.prof['name']}, min_free_gib).")
        if not os.path.exists("/proc/sys/fs/binfmt_misc/status"):
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
        run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
        try:
            with open("/proc/sys/fs/binfmt_misc/qemu-aarch64") as f:
                if "enabled" not in f.read():
                    raise OSError
        except OSError:
            raise BuildError("binfmt_misc handler qemu-aarch64 is not enabled; "
                             "install qemu-user-static and binfmt-support.")
        for role in self.prof["roles"] + ["first_boot"]:
            if not os.path.isdir(os.path.join(REPO, "roles", role)):
                raise BuildError(f"role {role!r} not found in {REPO}/roles; profile "
                                 f"{self.prof['name']} applies: {' '.join(self.prof['roles'])}")
        self.ansible = shutil.which("ansible-playbook", path=os.path.dirname(sys.executable)) \
            or shutil.which("ansible-playbook")
        if not self.ansible:
            raise BuildError("ansible-playbook not found (pip install ansible in the venv "
                             "that runs build.py; tools/ci/image.sh does this).")
        self.check_ansible_core()
        log(f"building {self.name} (profile {self.prof['name']}, mirror {self.prof['mirror']}, "
            f"{free_gib:.0f} GiB free)")

    def check_ansible_core(self):
        """The roles run under the ansible-core the playbooks pin, or not at all:
        two versions once broke image builds that deploy runs never saw."""
        req = os.path.join(REPO, "tools", "deploy", "requirements.txt")
        with open(req) as f:
            m = re.search(r"^ansible-core==(\S+)", f.read(), re.M)
        if not m:
            return
        res = run([self.ansible, "--version"], capture=True, check=False)
        have = re.search(r"\[core ([^\]]+)\]", res.stdout or "")
        have = have.group(1) if have else "unknown"
        if have != m.group(1):
            raise BuildError(
                f"{self.ansible} is ansible-core {have}; the playbooks and image builds use "
                f"{m.group(1)} ({os.path.relpath(req, REPO)}): pip install -c "
                f"{req} ansible-core ansible")
        self.result["ansible_core"] = have

    def debootstrap_cache(self):
        """(download tarball, bootstrapped tree tar) of this profile in the cache."""
        p = self.prof
        key = "-".join([p["suite"], p["arch"], p["variant"]] + sorted(p["debootstrap_include"]))
        digest = hashlib.sha256((key + p["mirror"]).encode()).hexdigest()[:12]
        tarball = os.path.join(self.cache, f"debootstrap-{p['suite']}-{p['arch']}-{digest}.tgz")
        return tarball, tarball[:-len(".tgz")] + "-rootfs.tar"

    def bootstrap(self):
        p = self.prof
        tarball, rootfs_cache = self.debootstrap_cache()
        os.makedirs(self.cache, exist_ok=True)
        common = [f"--arch={p['arch']}", f"--variant={p['variant']}",
                  "--components=" + ",".join(p["components"]),
                  "--include=" + ",".join(p["debootstrap_include"])]
        if not os.path.exists(tarball):
            tmp = tarball + ".partial"
            with tempfile.TemporaryDirectory(dir=self.work) as scratch:
                run(["debootstrap", *common, f"--make-tarball={tmp}", p["suite"],
                     os.path.join(scratch, "t"), p["mirror"]])
            os.rename(tmp, tarball)
            self.result["debootstrap_cache"] = "miss"
        else:
            self.result["debootstrap_cache"] = "hit"
        self.fresh_root()
        # The bootstrapped tree (second stage under emulation: ~4 min) is cached too.
        if os.path.exists(rootfs_cache) and not self.args.no_rootfs_cache:
            self.load_tree(rootfs_cache)
            self.result["rootfs_cache"] = "hit"
            return
        run(["debootstrap", *common, f"--unpack-tarball={tarball}", p["suite"], self.root,
             p["mirror"]])
        if not self.args.no_rootfs_cache:
            self.save_tree(rootfs_cache)
        self.result["rootfs_cache"] = "miss"

    def configure_apt_and_holds(self):
        p, r = self.prof, self.root
        comps = " ".join(p["components"])
        mirror = p["mirror"]
        security = re.sub(r"/debian$", "/debian-security", mirror)
        with open(f"{r}/etc/apt/sources.list", "w") as f:
            f.write(f"deb {mirror} {p['suite']} {comps}\n"
                    f"deb {mirror} {p['suite']}-updates {comps}\n"
                    f"deb {security} {p['suite']}-security {comps}\n")
        with open(f"{r}/etc/apt/apt.conf.d/90mec-conpaas-image", "w") as f:
            f.write('APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
                    'Acquire::Languages "none";\n'
                    '// the builder pre-seeds some conffiles (/etc/default/raspi-firmware)\n'
                    'Dpkg::Options { "--force-confdef"; "--force-confold"; };\n')
        # dpkg without fsync during the build (the image is written once, at the end),
        # and no man-db trigger under emulation.
        with open(f"{r}/etc/dpkg/dpkg.cfg.d/90mec-conpaas-build", "w") as f:
            f.write("# removed by image-builder/build.py at the end of the build\n"
                    "force-unsafe-io\n")
        # Embedded image: no manual pages, documentation or translations (they
        # cost unpack time under emulation and space on the card); copyright
        # files stay.
        with open(f"{r}/etc/dpkg/dpkg.cfg.d/80mec-conpaas-nodoc", "w") as f:
            f.write("path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n"
                    "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
                    "path-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n"
                    "path-exclude=/usr/share/lintian/*\n")
        self.chroot("sh", "-c", "echo 'man-db man-db/auto-update boolean false' | "
                    "debconf-set-selections")
        # Services are enabled, never started, in the chroot.
        with open(f"{r}/usr/sbin/policy-rc.d", "w") as f:
            f.write("#!/bin/sh\n# mec-conpaas image build: never start services\nexit 101\n")
        os.chmod(f"{r}/usr/sbin/policy-rc.d", 0o755)
        # Host DNS for apt during the build; restored in finalize().
        shutil.copy("/etc/resolv.conf", f"{r}/etc/resolv.conf")
        # Hold back initramfs rebuilds (about 8 minutes each under emulation):
        # one is built in finalize().
        os.makedirs(f"{r}/etc/initramfs-tools/conf.d", exist_ok=True)
        with open(f"{r}/etc/initramfs-tools/conf.d/mec-conpaas.conf", "w") as f:
            f.write("# mec-conpaas image: small initramfs, modules listed in ../modules\n"
                    "MODULES=list\nCOMPRESS=zstd\n"
                    "# root is ext4 (fstab says so; the hook can't probe it in a chroot):\n"
                    "# puts e2fsck in the initramfs so fsck.repair=yes works\nFSTYPE=ext4\n")
        with open(f"{r}/etc/initramfs-tools/modules", "w") as f:
            f.write("# mec-conpaas image (image-builder/profiles.ini initramfs_modules)\n")
            f.write("\n".join(p["initramfs_modules"]) + "\n")
        self.divert("/usr/sbin/update-initramfs")
        # Byte-compiling every Python package under emulation (dh_python's
        # py3compile in each postinst) dominates installing OpenStack: hold it
        # back and compile once at the end with the host's CPython 3.11 (same
        # bytecode magic as the image's, checked in finalize()).
        if os.path.exists(f"{self.root}/usr/bin/py3compile"):
            self.divert("/usr/bin/py3compile", what="py3compile")
        # The raspi-firmware kernel hook writes cmdline.txt from these.
        os.makedirs(f"{r}/etc/default", exist_ok=True)
        with open(f"{r}/etc/default/raspi-firmware", "w") as f:
            f.write(f"# mec-conpaas image\nROOTPART=PARTUUID={self.root_partuuid}\n"
                    "CONSOLES=\"serial0,115200 tty1\"\n")
        # Extra kernel arguments for that hook: roles/edge_tuning adds the cgroup ones.
        with open(f"{r}/etc/default/raspi-extra-cmdline", "w") as f:
            f.write("\n")
        with open(f"{r}/etc/hostname", "w") as f:
            f.write("mec-edge\n")
        with open(f"{r}/etc/hosts", "w") as f:
            f.write("127.0.0.1\tlocalhost\n127.0.1.1\tmec-edge\n"
                    "::1\t\tlocalhost ip6-localhost ip6-loopback\n")
        self.write_fstab()

    def write_fstab(self):
        with open(f"{self.root}/etc/fstab", "w") as f:
            f.write("# mec-conpaas image: by PARTUUID (image-builder/build.py)\n"
                    f"PARTUUID={self.root_partuuid}\t/\text4\tdefaults,noatime\t0\t1\n"
                    # nofail: a missing/unreadable boot partition must not drop the
                    # node into emergency mode (unreachable); first boot then reports
                    # the settings file as missing.  Generous device timeout: udev
                    # coldplug is slow under emulation on a busy host.
                    f"PARTUUID={self.boot_partuuid}\t/boot/firmware\tvfat\t"
                    "defaults,noatime,umask=0077,nofail,x-systemd.device-timeout=5min"
                    "\t0\t2\n")

    def divert(self, path, what="update-initramfs"):
        self.chroot("dpkg-divert", "--local", "--rename", "--add", path)
        with open(self.root + path, "w") as f:
            f.write("#!/bin/sh\n"
                    f"echo \"{what} held back during image build\" >&2\nexit 0\n")
        os.chmod(self.root + path, 0o755)

    def undivert(self, path):
        os.remove(self.root + path)
        self.chroot("dpkg-divert", "--local", "--rename", "--remove", path)

    def base(self):
        self.configure_apt_and_holds()
        self.chroot("apt-get", "update")
        self.chroot("apt-get", "install", "-y", *self.prof["base_packages"])
        kernels = sorted(d for d in os.listdir(f"{self.root}/lib/modules"))
        if len(kernels) != 1:
            raise BuildError(f"expected exactly one kernel in the image, found {kernels}")
        self.kernel_version = kernels[0]
        # The raspi-firmware kernel hook fills /boot/firmware (cmdline.txt, config.txt,
        # DTBs) only when an initrd exists, and initramfs builds are held back until
        # finalize(): give it a placeholder so the roles see (and may edit) cmdline.txt.
        placeholder = f"{self.root}/boot/initrd.img-{self.kernel_version}"
        if not os.path.exists(placeholder):
            open(placeholder, "w").close()
            self.placeholder_initrd = placeholder
        self.chroot("/etc/kernel/postinst.d/z50-raspi-firmware", self.kernel_version,
                    env_extra={"DEB_MAINT_PARAMS": "configure"})
        # systemd-resolved replaced resolv.conf with a symlink; keep host DNS during the build.
        if os.path.islink(f"{self.root}/etc/resolv.conf"):
            os.remove(f"{self.root}/etc/resolv.conf")
        shutil.copy("/etc/resolv.conf", f"{self.root}/etc/resolv.conf")

    def roles(self, tags=None):
        """Apply the profile's roles (then first_boot); with ``tags``, only those tasks."""
        roles = self.prof["roles"] + ["first_boot"]
        pdir = os.path.join(self.bdir, "ansible")
        os.makedirs(pdir, exist_ok=True)
        inv = os.path.join(pdir, "inventory.ini")
        with open(inv, "w") as f:
            # inventory_hostname is the image's placeholder host name (first boot
            # replaces it); ansible_host is the chroot directory.
            f.write("[mec_conpaas_image]\n"
                    f"mec-edge ansible_host={self.root} "
                    "ansible_connection=community.general.chroot "
                    "ansible_python_interpreter=/usr/bin/python3\n")
        # Wheels for the image's arm64 python (roles/mec_conpaas_package builds its
        # wheelhouse on the controller, which is x86-64 here).
        wrapper = os.path.join(pdir, "cross-wheel-python")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                    f"{shlex.quote(os.path.join(HERE, 'cross_wheel.py'))} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        wheelhouse = os.path.join(self.bdir, "wheelhouse")
        shutil.rmtree(wheelhouse, ignore_errors=True)
        play = os.path.join(pdir, "image.yml")
        with open(play, "w") as f:
            json.dump([{
                "name": "Configure the MEC-ConPaaS edge image root filesystem",
                "hosts": "mec_conpaas_image",
                "gather_facts": True,
                "vars": {"mec_conpaas_image_build": True},
                "roles": roles,
            }], f, indent=2)
        env = dict(os.environ)
        env.update({
            "ANSIBLE_ROLES_PATH": os.path.join(REPO, "roles"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_FORCE_COLOR": "0",
            # One python start per task instead of several (each costs seconds under qemu-user).
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
            "ANSIBLE_LOCAL_TEMP": os.path.join(pdir, "tmp"),
            "DEBIAN_FRONTEND": "noninteractive",
        })
        extra = ["-e", "@" + os.path.join(HERE, "image-vars.yml"),
                 "-e", json.dumps(self.role_vars())]
        for ev in self.args.extra_vars or []:
            extra += ["-e", ev]
        if tags:
            extra += ["--tags", tags]
        run([self.ansible, "-i", inv, play, *extra], env=env)
        self.result["roles"] = roles

    # ---------------------------------------------------------- package layer
    def layer_key(self):
        """Digest of everything the tree after bootstrap, base and the roles'
        'packages' tasks depends on; None (no layer cache) when it can't be known.

        The Debian archive's current InRelease files are part of it, so a
        security or point-release update of the mirror invalidates the layer
        instead of baking stale packages into a new image.
        """
        p = self.prof
        h = hashlib.sha256()

        def add(label, data):
            h.update(f"{label}\0{len(data)}\0".encode())
            h.update(data if isinstance(data, bytes) else data.encode())

        for key in ("suite", "arch", "variant", "mirror", "components", "debootstrap_include",
                    "base_packages", "initramfs_modules"):
            add(key, json.dumps(p[key]))
        # The builder code that writes the tree before the roles.
        for fn in (Builder.bootstrap, Builder.configure_apt_and_holds, Builder.divert,
                   Builder.base):
            add(fn.__name__, inspect.getsource(fn))
        security = re.sub(r"/debian$", "/debian-security", p["mirror"])
        for base, suite in ((p["mirror"], p["suite"]), (p["mirror"], f"{p['suite']}-updates"),
                            (security, f"{p['suite']}-security")):
            url = f"{base}/dists/{suite}/InRelease"
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    add(url, hashlib.sha256(r.read()).hexdigest())
            except OSError as e:
                log(f"package layer cache off: cannot read {url} ({e})")
                return None
        # What the tagged tasks install: those task files, the templates they
        # write and the values of the variables they read (closed over the
        # variables those values read in turn).  A role variable no package task
        # reads leaves the key alone: changing it rebuilds from the layer.
        for label, data in self.package_inputs():
            add(label, data)
        add("roles", json.dumps(p["roles"]))
        return h.hexdigest()[:16]

    def role_vars(self):
        """Extra variables every ansible-playbook run of this build gets (besides
        image-vars.yml and -e): the cross-wheel wrapper and the wheelhouse."""
        pdir = os.path.join(self.bdir, "ansible")
        return {
            "mec_conpaas_package_controller_python": os.path.join(pdir, "cross-wheel-python"),
            "mec_conpaas_package_wheelhouse_controller": os.path.join(self.bdir, "wheelhouse"),
            "mec_conpaas_package_source": REPO,
            "first_boot_node_agent_required": "mec_conpaas_node" in self.prof["roles"],
        }

    def package_inputs(self):
        """(label, bytes) of every input of the 'packages' tasks, in a stable order.

        Variables are found by name: every identifier inside a Jinja block or a
        bare conditional (``when``) of a tagged task, of the import that pulls
        its file in, or of a role dependency's parameters; each definition of
        such a name (role defaults/vars, image-vars.yml, -e, the builder's own)
        is an input, and so are the names its value reads.  Over-approximate
        (a filter name that is also a variable counts) but never misses a
        variable a package task can see through these sources.
        """
        yaml = _yaml()
        roles_dir = os.path.join(REPO, "roles")
        defs = {}  # name -> [(source, value)]

        def define(source, mapping):
            for k, v in (mapping or {}).items():
                defs.setdefault(k, []).append((source, v))

        out, need = [], set()
        for role in self.applied_roles():
            for sub in ("defaults", "vars"):
                d = os.path.join(roles_dir, role, sub)
                for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                    with open(os.path.join(d, name)) as f:
                        define(f"{role}/{sub}/{name}", yaml.safe_load(f))
            meta = os.path.join(roles_dir, role, "meta", "main.yml")
            if os.path.exists(meta):
                with open(meta) as f:
                    deps = (yaml.safe_load(f) or {}).get("dependencies") or []
                out.append((f"{role}/meta/dependencies", json.dumps(deps, sort_keys=True)))
                need |= _jinja_names(deps)
            tdir = os.path.join(roles_dir, role, "tasks")
            tagged = []
            for name in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else []:
                path = os.path.join(tdir, name)
                with open(path, "rb") as f:
                    data = f.read()
                tasks = [t for t in _tasks(yaml.safe_load(data)) if "packages" in _tags(t)]
                if not tasks:
                    continue
                tagged.append(name)
                out.append((os.path.relpath(path, REPO), data))
                for t in tasks:
                    need |= _jinja_names(t) | _bare_names(t)
                    args = next((v for k, v in t.items() if k.endswith(".template")
                                 or k == "template"), None)
                    src = args.get("src") if isinstance(args, dict) else None
                    if src:
                        tpl = os.path.join(roles_dir, role, "templates", src)
                        with open(tpl, "rb") as f:
                            tdata = f.read()
                        out.append((os.path.relpath(tpl, REPO), tdata))
                        need |= _jinja_names(tdata.decode())
            # The import statements that pull the tagged files in (their 'when').
            for path in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else []:
                with open(os.path.join(tdir, path)) as f:
                    for t in _tasks(yaml.safe_load(f)):
                        imp = next((v for k, v in t.items() if k.endswith("import_tasks")
                                    or k.endswith("include_tasks")), None)
                        if imp in tagged:
                            out.append((f"{role}/tasks/{path}:{imp}",
                                        json.dumps(t, sort_keys=True, default=str)))
                            need |= _jinja_names(t) | _bare_names(t)
        with open(os.path.join(HERE, "image-vars.yml")) as f:
            define("image-vars.yml", yaml.safe_load(f))
        define("play", {"mec_conpaas_image_build": True})
        define("builder", self.role_vars())
        for i, ev in enumerate(self.args.extra_vars or []):
            define(f"-e #{i}", _extra_vars(ev, yaml))
        seen, values = set(), []
        while need:
            name = need.pop()
            if name in seen:
                continue
            seen.add(name)
            for source, value in defs.get(name, []):
                values.append((f"var {name} from {source}",
                               json.dumps(value, sort_keys=True, default=str)))
                need |= _jinja_names(value)
        # Sorted: the closure's order follows set iteration, which differs per process.
        self.result["package_layer_vars"] = sorted(n for n in seen if n in defs)
        return out + sorted(values)

    def applied_roles(self):
        """The profile's roles, first_boot and, transitively, their meta dependencies."""
        yaml = _yaml()
        todo, seen = self.prof["roles"] + ["first_boot"], set()
        while todo:
            role = todo.pop()
            if role in seen:
                continue
            seen.add(role)
            meta = os.path.join(REPO, "roles", role, "meta", "main.yml")
            if os.path.exists(meta):
                with open(meta) as f:
                    deps = (yaml.safe_load(f) or {}).get("dependencies") or []
                todo += [d if isinstance(d, str) else d.get("role") or d.get("name")
                         for d in deps]
        return sorted(seen)

    def layer_path(self, key):
        return os.path.join(self.cache, f"layer-{self.prof['name']}-{key}.tar")

    def save_layer(self, key):
        """Tar the tree (nothing mounted in it) and keep the newest layers only."""
        self.save_tree(self.layer_path(key))
        prefix = f"layer-{self.prof['name']}-"
        old = sorted((os.path.join(self.cache, f) for f in os.listdir(self.cache)
                      if f.startswith(prefix) and f.endswith(".tar")),
                     key=os.path.getmtime, reverse=True)
        for stale in old[max(self.prof["package_layers_kept"], 1):]:
            log(f"removing old package layer {stale}")
            os.remove(stale)

    def restore_layer(self, key):
        self.fresh_root()
        self.load_tree(self.layer_path(key))
        os.utime(self.layer_path(key))  # most recently used: kept longest
        self.adopt_tree()
        # This build's disk identifier, not the one the layer was made with.
        with open(f"{self.root}/etc/default/raspi-firmware") as f:
            text = f.read()
        with open(f"{self.root}/etc/default/raspi-firmware", "w") as f:
            f.write(re.sub(r"^ROOTPART=.*$", f"ROOTPART=PARTUUID={self.root_partuuid}", text,
                           flags=re.M))
        self.write_fstab()
        shutil.copy("/etc/resolv.conf", f"{self.root}/etc/resolv.conf")

    def service_image(self):
        """Bake the node agent's base service image into the tree.

        With a container backend the node agent overlays every instance on a
        minbase Debian tree; on a deployed AP a oneshot unit debootstraps it
        at first boot, which on a Pi means a mirror and many minutes before
        the node can host anything.  The builder already has that tree (the
        bootstrap stage's cached second stage, a superset of the base image's
        packages), so it is unpacked into place on the host, no emulation.
        """
        conf = configparser.ConfigParser(interpolation=None, strict=False)
        conf.read(f"{self.root}/etc/mec-conpaas/mec-conpaas.conf")
        backend = conf.get("node_agent", "container_backend", fallback="none")
        path = conf.get("node_agent", "base_image_path", fallback="")
        if backend != "libvirt" or not path:
            return
        _, rootfs_cache = self.debootstrap_cache()
        if not os.path.exists(rootfs_cache):
            log(f"no {rootfs_cache}: the base service image is built at first boot")
            self.result["service_image"] = "first boot"
            return
        sys.path.insert(0, REPO)
        from mec_conpaas.edge import image as service_image
        dest = self.root + path
        tmp = dest + ".building"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        run(["tar", "-C", tmp, "--numeric-owner", "--xattrs", "--xattrs-include=*",
             "-xpf", rootfs_cache])
        shutil.rmtree(dest, ignore_errors=True)
        service_image.finish(tmp, dest, "image-builder: debootstrap minbase %s %s +%s" % (
            self.prof["suite"], self.prof["mirror"], ",".join(self.prof["debootstrap_include"])))
        self.result["service_image"] = path

    def finalize(self):
        r = self.root
        self.undivert("/usr/sbin/update-initramfs")
        if os.path.exists(f"{r}/usr/bin/py3compile.distrib"):
            self.undivert("/usr/bin/py3compile")
            self.compile_python()
        if getattr(self, "placeholder_initrd", None) and \
                os.path.getsize(self.placeholder_initrd) == 0:
            os.remove(self.placeholder_initrd)
        # Kernel arguments the roles added to cmdline.txt (edge_tuning: cgroups)
        # would be lost whenever the raspi-firmware hook regenerates it (here,
        # and on every kernel update on the Pi): persist them where the hook
        # reads them.
        cmd_file = f"{r}/boot/firmware/cmdline.txt"
        roles_words = open(cmd_file).read().split() if os.path.exists(cmd_file) else []
        # One initramfs, MODULES=list; its post-update hook (raspi-firmware) copies
        # it to /boot/firmware next to the kernel and regenerates cmdline.txt.
        self.chroot("update-initramfs", "-c", "-k", self.kernel_version)
        # Ensure the kernel hook ran with our settings (cmdline.txt, config.txt, dtbs).
        self.chroot("/etc/kernel/postinst.d/z50-raspi-firmware", self.kernel_version,
                    env_extra={"DEB_MAINT_PARAMS": "configure"})
        hook_words = open(cmd_file).read().split()
        keys = {w.split("=", 1)[0] for w in hook_words}
        missing = [w for w in roles_words
                   if w not in hook_words and w.split("=", 1)[0] not in keys]
        if missing:
            log(f"keeping kernel arguments added by the roles: {' '.join(missing)}")
            extra = f"{r}/etc/default/raspi-extra-cmdline"
            words = open(extra).read().split() + missing
            with open(extra, "w") as f:
                f.write(" ".join(words) + "\n")
            self.chroot("/etc/kernel/postinst.d/z50-raspi-firmware", self.kernel_version,
                        env_extra={"DEB_MAINT_PARAMS": "configure"})
        cmdline = open(cmd_file).read().strip()
        if (f"root=PARTUUID={self.root_partuuid}" not in cmdline
                or ("edge_tuning" in self.prof["roles"]
                    and "cgroup_enable=memory" not in cmdline)):
            raise BuildError(f"unexpected cmdline.txt: {cmdline!r}")
        for f in (f"vmlinuz-{self.kernel_version}", f"initrd.img-{self.kernel_version}",
                  "config.txt"):
            if not os.path.exists(f"{r}/boot/firmware/{f}"):
                raise BuildError(f"/boot/firmware/{f} missing after the kernel hooks")
        self.write_fstab()
        # Nothing host- or build-specific baked in.
        for f in os.listdir(f"{r}/etc/ssh"):
            if f.startswith("ssh_host_"):
                os.remove(f"{r}/etc/ssh/{f}")
        open(f"{r}/etc/machine-id", "w").close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{r}/var/lib/dbus/machine-id")
        os.remove(f"{r}/usr/sbin/policy-rc.d")
        os.remove(f"{r}/etc/dpkg/dpkg.cfg.d/90mec-conpaas-build")
        os.remove(f"{r}/etc/resolv.conf")
        os.symlink("../run/systemd/resolve/stub-resolv.conf", f"{r}/etc/resolv.conf")
        # The .deb cache is bind-mounted from build-cache/cache/apt-archives: keep it
        # for the next build (apt-get clean would empty it), clean only the tree's.
        archives = f"{r}/var/cache/apt/archives"
        if archives in self.mounts:
            run(["umount", archives])
            self.mounts.remove(archives)
        self.chroot("apt-get", "clean")
        # Package manifest (same data as dpkg -l), before unmounting.
        q = self.chroot("dpkg-query", "-W",
                        "-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
                        capture=True)
        pkgs = []
        for line in q.stdout.splitlines():
            status, name, ver, arch = line.split("\t")
            pkgs.append({"status": status.strip(), "package": name, "version": ver, "arch": arch})
        self.packages = sorted(pkgs, key=lambda x: x["package"])
        self.umount_all()
        for d in ("var/lib/apt/lists", "var/cache/apt/archives", "tmp", "var/tmp"):
            path = os.path.join(r, d)
            for entry in os.listdir(path):
                full = os.path.join(path, entry)
                if d == "var/cache/apt/archives" or d == "var/lib/apt/lists":
                    if entry in ("partial", "lock"):
                        continue
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.remove(full)
        # Every account: no password hash (locked or no password login at all).
        bad = []
        for line in open(f"{r}/etc/shadow"):
            user, pw = line.split(":")[:2]
            if not (pw.startswith("!") or pw.startswith("*")):
                bad.append(user)
        if bad:
            raise BuildError(f"accounts with a password or an empty password: {bad}")

    def compile_python(self):
        """What the held-back py3compile runs would have produced, natively."""
        magic = "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"
        inside = self.chroot("python3", "-c", magic, capture=True).stdout.strip()
        host_py = "/usr/bin/python3"
        host = run([host_py, "-c", magic], capture=True).stdout.strip()
        ver = "import sys; print('%d.%d' % sys.version_info[:2])"
        same = (inside == host and
                self.chroot("python3", "-c", ver, capture=True).stdout.strip()
                == run([host_py, "-c", ver], capture=True).stdout.strip())
        # Debian's modules, and the venvs under /opt whose pip install ran with
        # --no-compile (roles/mec_conpaas_package: minutes of emulated Python).
        dirs = [d for d in (f"{self.root}/usr/lib/python3/dist-packages",
                            *sorted(glob.glob(f"{self.root}/opt/*/venv/lib/python3*/site-packages")))
                if os.path.isdir(d)]
        if same:
            run([host_py, "-m", "compileall", "-q", "-j", "0", "-s", self.root, "-p", "/",
                 *dirs])
        else:  # different bytecode: compile inside, under emulation (slow but right)
            self.chroot("python3", "-m", "compileall", "-q", "-j", "0",
                        *(d[len(self.root):] for d in dirs))
        self.result["python_bytecode"] = "host" if same else "emulated"

    def assemble(self):
        p, r = self.prof, self.root
        eb = p["erase_block_mib"]
        boot_dir = os.path.join(self.bdir, "bootfs")
        if os.path.exists(boot_dir):
            shutil.rmtree(boot_dir)
        # /boot/firmware goes into the FAT partition only; an empty mount point stays.
        shutil.move(f"{r}/boot/firmware", boot_dir)
        os.makedirs(f"{r}/boot/firmware")
        try:
            du = int(run(["du", "-s", "--block-size=1", "-x", r], capture=True).stdout.split()[0])
            # ext4 overhead (inode tables, journal) ~6% + slack, rounded to the erase block.
            root_mib = round_up(int(du * 1.08 / MIB) + p["root_slack_mib"], eb)
            boot_mib = p["boot_size_mib"]
            first = p["first_partition_mib"]
            for v, what in ((first, "first_partition_mib"), (boot_mib, "boot_size_mib")):
                if v % eb:
                    raise BuildError(f"{what}={v} is not a multiple of erase_block_mib={eb}")
            root_start = first + boot_mib
            total_mib = root_start + root_mib
            img = os.path.join(self.bdir, f"{self.name}.img")
            boot_img = os.path.join(self.bdir, "boot.vfat")
            root_img = os.path.join(self.bdir, "root.ext4")
            for f in (img, boot_img, root_img):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)
            # FAT32 boot partition from the directory.
            run(["truncate", "-s", f"{boot_mib}M", boot_img])
            run(["mkfs.vfat", "-F", "32", "-n", BOOT_LABEL, "-i", self.disk_id, boot_img])
            entries = [os.path.join(boot_dir, e) for e in sorted(os.listdir(boot_dir))]
            run(["mcopy", "-s", "-p", "-m", "-i", boot_img, *entries, "::/"])
            # ext4 root from the directory, stride/stripe = one 4 MiB erase block of 4 KiB blocks.
            stride = eb * MIB // 4096
            env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(int(time.time())))
            run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-b", "4096",
                 "-E", f"stride={stride},stripe_width={stride}", "-d", r, root_img,
                 f"{root_mib}M"], env=env)
            run(["e2fsck", "-fn", root_img])
            # The disk image: DOS label, both partitions 4 MiB aligned.
            run(["truncate", "-s", f"{total_mib}M", img])
            sectors = MIB // 512
            table = (f"label: dos\nlabel-id: 0x{self.disk_id}\nunit: sectors\n\n"
                     f"start={first * sectors}, size={boot_mib * sectors}, type=c, bootable\n"
                     f"start={root_start * sectors}, size={root_mib * sectors}, type=83\n")
            run(["sfdisk", "--no-reread", "--no-tell-kernel", img], input=table)
            run(["dd", f"if={boot_img}", f"of={img}", "bs=1M", f"seek={first}",
                 "conv=notrunc,sparse", "status=none"])
            run(["dd", f"if={root_img}", f"of={img}", "bs=1M", f"seek={root_start}",
                 "conv=notrunc,sparse", "status=none"])
            os.remove(boot_img)
            os.remove(root_img)
            self.img = img
            self.result.update({
                "image_mib": total_mib, "root_partition_mib": root_mib,
                "boot_partition_mib": boot_mib, "root_tree_bytes": du,
                "disk_id": self.disk_id,
            })
        finally:
            # Put /boot/firmware back so the root tree stays a complete system (--keep-root).
            shutil.rmtree(f"{r}/boot/firmware")
            shutil.move(boot_dir, f"{r}/boot/firmware")

    def compress(self):
        if self.prof["xz_level"] < 0:
            # No compression (CI profile): the raw image is the artifact.
            raw = os.path.join(self.out, f"{self.name}.img")
            run(["cp", "--sparse=always", self.img, raw])
            self.xz = raw
        else:
            self.xz = self._xz()
        digest = run(["sha256sum", os.path.basename(self.xz)], capture=True,
                     cwd=self.out).stdout
        with open(self.xz + ".sha256", "w") as f:
            f.write(digest)
        self.result["xz_bytes"] = os.path.getsize(self.xz)
        self.result["sha256"] = digest.split()[0]

    def _xz(self):
        xz = os.path.join(self.out, f"{self.name}.img.xz")
        with open(xz + ".partial", "wb") as f:
            subprocess.run(["xz", "-T0", f"-{self.prof['xz_level']}", "-c", self.img],
                           stdout=f, check=True)
        os.rename(xz + ".partial", xz)
        return xz

    def manifest(self):
        p = self.prof
        roles_info = {}
        for role in self.result.get("roles", []):
            roles_info[role] = {
                "git_tree": git("rev-parse", f"HEAD:roles/{role}") or None,
                "modified_since_commit": bool(git("status", "--porcelain", "--", f"roles/{role}")),
            }
        m = {
            "name": self.name,
            "version": self.version,
            "profile": p["name"],
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "image": os.path.basename(self.xz),
            "sha256": self.result["sha256"],
            "kernel": self.kernel_version,
            "partitions": {
                "disk_id": f"0x{self.disk_id}",
                "boot": {"partuuid": self.boot_partuuid, "label": BOOT_LABEL, "fstype": "vfat",
                         "start_mib": p["first_partition_mib"], "size_mib": p["boot_size_mib"]},
                "root": {"partuuid": self.root_partuuid, "label": ROOT_LABEL, "fstype": "ext4",
                         "start_mib": p["first_partition_mib"] + p["boot_size_mib"],
                         "size_mib": self.result["root_partition_mib"]},
            },
            "build_inputs": {
                "suite": p["suite"], "arch": p["arch"], "mirror": p["mirror"],
                "components": p["components"], "debootstrap_variant": p["variant"],
                "debootstrap_include": p["debootstrap_include"],
                "base_packages": p["base_packages"], "roles": roles_info,
                "initramfs_modules": p["initramfs_modules"],
                "erase_block_mib": p["erase_block_mib"], "xz_level": p["xz_level"],
                "extra_vars": self.args.extra_vars or [],
                "image_vars": open(os.path.join(HERE, "image-vars.yml")).read(),
                "repo_commit": git("rev-parse", "HEAD") or None,
                "repo_dirty_paths": git("status", "--porcelain", "--", "image-builder",
                                        "roles").splitlines(),
                "builder_host": {pkg: run(["dpkg-query", "-W", "-f=${Version}", pkg],
                                          capture=True, check=False).stdout
                                 for pkg in ("debootstrap", "qemu-user-static")},
            },
            "packages": self.packages,
        }
        path = os.path.join(self.out, f"{self.name}.manifest.json")
        with open(path, "w") as f:
            json.dump(m, f, indent=1)
            f.write("\n")
        self.manifest_path = path

    # ------------------------------------------------------------------ main
    def adopt_tree(self):
        """What base() would have learnt, from a tree made by an earlier build."""
        kernels = sorted(os.listdir(f"{self.root}/lib/modules"))
        if len(kernels) != 1:
            raise BuildError(f"expected exactly one kernel in the image, found {kernels}")
        self.kernel_version = kernels[0]
        placeholder = f"{self.root}/boot/initrd.img-{self.kernel_version}"
        if os.path.exists(placeholder) and os.path.getsize(placeholder) == 0:
            self.placeholder_initrd = placeholder

    def resume_base(self):
        """--resume: take over the root tree an earlier build of this profile left
        behind after its base stage (it failed or was stopped in roles)."""
        r = self.root
        try:
            rootpart = open(f"{r}/etc/default/raspi-firmware").read()
        except OSError:
            raise BuildError(f"--resume: no root tree of an earlier build in {r}")
        m = re.search(r"^ROOTPART=PARTUUID=([0-9a-f]{8})-02$", rootpart, re.M)
        if not m or not os.path.exists(f"{r}/usr/sbin/policy-rc.d") or \
                not os.path.exists(f"{r}/usr/sbin/update-initramfs.distrib"):
            raise BuildError(f"--resume: {r} did not get through the base stage")
        self.disk_id = m.group(1)
        self.boot_partuuid = f"{self.disk_id}-01"
        self.root_partuuid = f"{self.disk_id}-02"
        self.adopt_tree()
        shutil.copy("/etc/resolv.conf", f"{r}/etc/resolv.conf")
        self.result["resumed"] = ("root tree of an earlier build reused: bootstrap and "
                                  "base not run, roles re-applied over it")
        log(f"resuming {r} (disk id {self.disk_id}, kernel {self.kernel_version})")

    def build(self):
        try:
            with self.stage("preflight"):
                self.preflight()
            if self.args.resume:
                self.umount_all()
                self.resume_base()
                self.mount_chroot_fs()
            else:
                key = self.layer_key() if self.prof["package_layer"] \
                    and not self.args.no_rootfs_cache else None
                self.result["package_layer"] = "off" if key is None else "miss"
                if key and os.path.exists(self.layer_path(key)):
                    with self.stage("layer"):
                        self.restore_layer(key)
                    self.result["package_layer"] = "hit"
                    self.mount_chroot_fs()
                else:
                    with self.stage("bootstrap"):
                        self.bootstrap()
                    self.mount_chroot_fs()
                    with self.stage("base"):
                        self.base()
                    if key:
                        with self.stage("packages"):
                            self.roles(tags="packages")
                            self.umount_all()
                            self.save_layer(key)
                        self.mount_chroot_fs()
            with self.stage("roles"):
                self.roles()
                self.service_image()
            with self.stage("finalize"):
                self.finalize()
        finally:
            self.umount_all()
        with self.stage("assemble"):
            self.assemble()
        with self.stage("compress"):
            self.compress()
        self.manifest()
        total = round(time.monotonic() - self.t0, 1)
        summary = {
            "name": self.name, "profile": self.prof["name"], "image": self.xz,
            "raw_image": self.img, "manifest": self.manifest_path,
            "stages_s": self.timings, "total_s": total, **self.result,
        }
        with open(os.path.join(self.out, f"{self.name}.build.json"), "w") as f:
            json.dump(summary, f, indent=1)
        if not self.args.keep_root:
            shutil.rmtree(self.root)
        log(f"built {self.xz} in {total} s")
        print(json.dumps(summary), flush=True)
        return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="edge", help="section of profiles.ini (edge, ci, base)")
    ap.add_argument("--version",
                    help="version string in the image name (default: setup.cfg version + git)")
    ap.add_argument("--mirror", help="Debian mirror (default: the host's configured one)")
    ap.add_argument("--work-dir", default=os.path.join(HERE, "build-cache"))
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--disk-id", help="8 hex digits for the DOS disk identifier (PARTUUID prefix)")
    ap.add_argument("--no-rootfs-cache", action="store_true",
                    help="do not reuse/store the bootstrapped tree or the package layer "
                    "(download cache still used)")
    ap.add_argument("--keep-root", action="store_true", help="keep the root tree after the build")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the root tree an earlier build of this profile left after a "
                    "failure in the roles stage: skip bootstrap and base, re-apply the roles "
                    "(idempotent) and finish; the build record says so")
    ap.add_argument("-e", "--extra-vars", action="append", help="passed to ansible-playbook -e")
    args = ap.parse_args(argv)
    if args.disk_id and not re.fullmatch(r"[0-9a-f]{8}", args.disk_id):
        ap.error("--disk-id must be 8 lower-case hex digits")
    try:
        Builder(args).build()
    except BuildError as e:
        log(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
