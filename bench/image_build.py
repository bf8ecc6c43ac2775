#!/usr/bin/env python3
"""Benchmark of the image builder (issue 4): build time per stage on this
machine (debootstrap under emulation, roles, assembly, compression), image
and root filesystem sizes, and first-boot-to-login time under emulation
(qemu-system-aarch64 -M virt -cpu cortex-a53 -m 1024).

    bench/image_build.py [--profile edge] [--floor-profile base] [--cold|--first] [--quick]
                         [--image X.img.xz]
    bench/image_build.py --rebuild-var wifi_ap_channel=11 [--image X.img.xz]

The floor, measured in the same run: the ``base`` profile, i.e. the same
builder making a bare Debian Pi image with first boot but none of the
project's roles (no OpenStack, Wi-Fi AP or node agent).  The ratios say what
our roles cost in build time and boot time over a plain Pi OS image.

--cold   empty the caches first (debootstrap tarball, bootstrapped tree, apt
         archives, package layers): both builds start from nothing
--first  empty the bootstrapped tree and the package layers, keep the
         downloads (debootstrap tarball, apt archives): a first build as the
         target states it ("with the downloads cached between builds")
--quick  no build: the newest already-built images of both profiles (or
         --image), sizes and times from their build records, one emulated
         boot each (the floor image is built if there is none)

--rebuild-var  a second build with one role variable changed that no package
         task reads, against the first (its build record): it must start from
         the cached package layer; image_build_rebuild-<profile>-<time>.json
         ("none": only the first build's record, nothing built)
--from-log  stage and task times of a build.py log (a failed build has no
         record) into image_build_log-<profile>-<time>.json

Writes bench/results/image_build-<profile>-<UTC time>.json and .png; prints
the summary as ONE JSON object on its last line.  Targets (issue 4): full edge
image built in <= 20 min on 2 cores, compressed image <= 600 MB.  Needs root.
"""

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
BUILDER = os.path.join(REPO, "image-builder", "build.py")
TARGET_BUILD_S = 20 * 60
TARGET_XZ_BYTES = 600 * 1000 * 1000
MIB = 1024 * 1024


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def build(profile, work, out, cold, extra_vars=(), version=None):
    """``cold``: False, "cold" (every cache emptied) or "first" (the trees and
    package layers emptied, the downloads kept: the target's first build)."""
    cache = os.path.join(work, "cache")
    if cold == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    elif cold == "first":
        for path in (glob.glob(os.path.join(cache, "debootstrap-*-rootfs.tar"))
                     + glob.glob(os.path.join(cache, "layer-*.tar"))):
            os.unlink(path)
    t = time.monotonic()
    cmd = [sys.executable, BUILDER, "--profile", profile, "--work-dir", work, "--out-dir", out]
    for ev in extra_vars:
        cmd += ["-e", ev]
    if version:
        cmd += ["--version", version]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.monotonic() - t
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode})")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_s"] = round(wall, 1)
    return summary


def newest_record(out, profile):
    recs = sorted(glob.glob(os.path.join(out, f"mec-conpaas-edge-{profile}-*.build.json")),
                  key=os.path.getmtime)
    if not recs:
        raise SystemExit(f"--quick: no build record for profile {profile} in {out}")
    with open(recs[-1]) as f:
        return json.load(f)


def boot(image_xz, workdir, timeout=900):
    """Boot a copy (+1 GiB, settings file with a fresh key) and time the console
    login prompt and the first SSH login."""
    raw = os.path.join(workdir, "disk.img")
    if image_xz.endswith(".xz"):
        with open(raw, "wb") as f:
            subprocess.run(["xz", "-dc", "-T0", image_xz], stdout=f, check=True)
    else:  # uncompressed profile (ci)
        subprocess.run(["cp", "--sparse=always", image_xz, raw], check=True)
    with open(raw, "r+b") as f:
        f.truncate(os.path.getsize(raw) + 1024 * MIB)
    table = json.loads(sh("sfdisk", "-J", raw).stdout)["partitiontable"]
    p1 = sorted(table["partitions"], key=lambda p: p["start"])[0]
    mt = f"{raw}@@{p1['start'] * 512}"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    key = os.path.join(workdir, "id_ed25519")
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
    pub = open(key + ".pub").read().strip()
    cfg = os.path.join(workdir, "mec-conpaas.txt")
    with open(cfg, "w") as f:
        f.write(f"hostname = bench-ap\nwifi_ssid = bench\nwifi_passphrase = benchbench\n"
                f"wifi_country = NL\nmaster = 10.0.2.2\nregistration_token = bench\n"
                f"ssh_authorized_key = {pub}\n")
    sh("mcopy", "-o", "-i", mt, cfg, "::mec-conpaas.txt", env=env)
    names = [ln.strip().split("/")[-1] for ln in
             sh("mdir", "-b", "-i", mt, "::/", env=env).stdout.splitlines()]
    for f in ("vmlinuz", "initrd.img"):
        src = [n for n in names if n.startswith(f + "-")][0]
        sh("mcopy", "-o", "-i", mt, f"::{src}", os.path.join(workdir, f), env=env)
    cmdline = sh("mtype", "-i", mt, "::cmdline.txt", env=env).stdout.split()
    cmdline = " ".join([a for a in cmdline if not a.startswith("console=")] + ["console=ttyAMA0"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    console = os.path.join(workdir, "console.log")
    cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "1024", "-smp", "2",
           "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
           "-kernel", os.path.join(workdir, "vmlinuz"),
           "-initrd", os.path.join(workdir, "initrd.img"),
           "-append", cmdline, "-drive", f"file={raw},if=virtio,format=raw",
           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
           "-device", "virtio-net-pci,netdev=n0", "-no-reboot"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    res = {"login_prompt_s": None, "ssh_login_s": None}
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            text = open(console, errors="replace").read() if os.path.exists(console) else ""
            # kernel messages may follow the prompt on the same line
            prompt = re.search(r"login: ?(\[ *\d+\.\d+\].*)?$", text, re.M)
            if res["login_prompt_s"] is None and prompt:
                res["login_prompt_s"] = round(time.monotonic() - t0, 1)
            if res["ssh_login_s"] is None:
                r = subprocess.run(["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes",
                                    "-o", "StrictHostKeyChecking=no", "-o",
                                    "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                                    "-o", "LogLevel=ERROR", "mec@127.0.0.1",
                                    "df -B1 --output=size / | tail -1; "
                                    "cat /proc/sys/vm/swappiness"],
                                   capture_output=True, text=True, timeout=60)
                if r.returncode == 0:
                    res["ssh_login_s"] = round(time.monotonic() - t0, 1)
                    size, swp = r.stdout.split()
                    res["grown_root_fs_bytes"] = int(size)
                    res["swappiness"] = int(swp)
            if res["login_prompt_s"] is not None and res["ssh_login_s"] is not None:
                break
            time.sleep(1)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return res


def measure(profile, args):
    """Build record (built now, or the newest one with --quick) and one boot."""
    if args.quick:
        if args.image and profile == args.profile:
            base = args.image[:-len(".xz")] if args.image.endswith(".xz") else args.image
            with open(base[:-len(".img")] + ".build.json") as f:
                rec = json.load(f)
        else:
            try:
                rec = newest_record(args.out_dir, profile)
            except SystemExit:
                rec = build(profile, args.work_dir, args.out_dir, cold=False)
                rec["measured_now"] = True
        rec.setdefault("wall_s", rec.get("total_s"))
        rec.setdefault("measured_now", False)
    else:
        rec = build(profile, args.work_dir, args.out_dir,
                    "cold" if args.cold else "first" if args.first else False)
        rec["measured_now"] = True
    tmp = tempfile.mkdtemp(prefix="mec-bench-boot-", dir=args.work_dir)
    try:
        rec["boot"] = boot(rec["image"], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rec


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    stages = summary["build"]["stages_s"]
    a.barh(list(stages), list(stages.values()), color="tab:blue", label=summary["profile"])
    fl = summary.get("floor")
    if fl:
        fs = fl["build"]["stages_s"]
        a.barh(list(fs), list(fs.values()), color="tab:gray", alpha=0.6,
               label=f"floor: {fl['profile']} ({fl['build']['total_s']:.0f} s)")
        a.legend(fontsize=8)
    a.set_xlabel("seconds")
    partial = " of a RESUMED build, partial" if summary["build"].get("resumed") else ""
    a.set_title(f"build stages, profile {summary['profile']} "
                f"(total {summary['build']['total_s']:.0f} s{partial}, "
                f"target {TARGET_BUILD_S} s)", fontsize=9)
    a.invert_yaxis()
    labels = ["xz image (MB)", "raw image (MB)", "root tree (MB)"]
    vals = [summary["sizes"]["xz_bytes"] / 1e6, summary["sizes"]["image_bytes"] / 1e6,
            summary["sizes"]["root_tree_bytes"] / 1e6]
    b.bar(labels, vals, color=["tab:green", "tab:gray", "tab:orange"])
    b.axhline(TARGET_XZ_BYTES / 1e6, color="red", ls="--", label="xz target 600 MB")
    bt = summary["boot"]
    floor_boot = (f" (floor {fl['boot'].get('login_prompt_s')} s / "
                  f"{fl['boot'].get('ssh_login_s')} s)") if fl else ""
    b.set_title(f"sizes; emulated boot: login prompt {bt.get('login_prompt_s')} s, "
                f"ssh {bt.get('ssh_login_s')} s{floor_boot}", fontsize=9)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def rebuild(args):
    """--rebuild-var: the first build (--image's record, or the newest of the
    profile) against a build made now with one role variable changed that no
    package task reads: it must start from the package layer, not from scratch."""
    if args.image:
        base = args.image[:-len(".xz")] if args.image.endswith(".xz") else args.image
        with open(base[:-len(".img")] + ".build.json") as f:
            first = json.load(f)
    else:
        first = newest_record(args.out_dir, args.profile)
    var = args.rebuild_var
    load0 = os.getloadavg()
    if var == "none":  # only the first build's record (built earlier, e.g. by build-full.sh)
        rec = None
    else:
        rec = build(args.profile, args.work_dir, args.out_dir, cold=False, extra_vars=[var],
                    version=first["name"][len(f"mec-conpaas-edge-{args.profile}-"):]
                    .rsplit("-", 1)[0] + "-rebuild")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    summary = {
        "benchmark": "image_build_rebuild", "profile": args.profile, "time": stamp,
        "host_cpus": os.cpu_count(),
        "machine": "shared: other helpers' builds and tests ran at the same time",
        "loadavg_at_start": [round(x, 2) for x in load0],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "changed_variable": var,
        "first": {"image": os.path.basename(first["image"]), "resumed": first.get("resumed"),
                  "stages_s": first["stages_s"],
                  "total_s": first["total_s"], "package_layer": first.get("package_layer"),
                  "debootstrap_cache": first.get("debootstrap_cache"),
                  "rootfs_cache": first.get("rootfs_cache")},
        "first_build_loadavg_1min_at_stage_end": first.get("loadavg_1min_at_stage_end"),
        "rebuild": rec and {"image": os.path.basename(rec["image"]),
                            "stages_s": rec["stages_s"], "total_s": rec["total_s"],
                            "wall_s": rec["wall_s"], "package_layer": rec.get("package_layer")},
        "ratio_rebuild_to_first": rec and ratio(rec["total_s"], first["total_s"]),
        "targets": {"build_s_max": TARGET_BUILD_S},
        "targets_met": {"first_build": first["total_s"] <= TARGET_BUILD_S,
                        "rebuild_from_layer": rec and rec.get("package_layer") == "hit"},
    }
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"image_build_rebuild-{args.profile}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    summary["results"] = [path]
    print(json.dumps(summary))


def from_log(args):
    """--from-log: stage times and the slowest Ansible tasks (profile_tasks recaps)
    of a build.py log, also of a build that failed (its record is never written)."""
    stages, tasks, failed = {}, [], None
    with open(args.from_log) as f:
        text = f.read()
    for m in re.finditer(r"=== stage (\S+) done in ([\d.]+) s", text):
        stages[m.group(1)] = float(m.group(2))
    for m in re.finditer(r"^(\S+ : .+?|Gathering Facts)[ -]+ ([\d.]+)s$", text, re.M):
        if float(m.group(2)) >= args.min_task_s:
            tasks.append({"task": m.group(1).strip(), "s": float(m.group(2))})
    # profile_tasks' recap lists only the slowest 20 of a run; the line under each
    # task header gives the previous task's time, so the others come from there.
    seen = {(t["task"], t["s"]) for t in tasks}
    heads = list(re.finditer(r"^TASK \[(.+?)\] \*+\n.*?\((\d+):(\d+):([\d.]+)\)", text, re.M))
    for prev, nxt in zip(heads, heads[1:]):
        h, mnt, sec = (float(x) for x in nxt.group(2, 3, 4))
        took = round(h * 3600 + mnt * 60 + sec, 2)
        if took >= args.min_task_s and (prev.group(1), took) not in seen:
            tasks.append({"task": prev.group(1), "s": took})
    m = re.search(r"ERROR: (.+)", text)
    failed = m.group(1)[:300] if m else None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    summary = {"benchmark": "image_build_log", "profile": args.profile, "time": stamp,
               "log": os.path.basename(args.from_log), "host_cpus": os.cpu_count(),
               "machine": args.machine_note, "stages_s": stages,
               "slowest_tasks_s": sorted(tasks, key=lambda t: -t["s"]), "error": failed}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"image_build_log-{args.profile}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="edge")
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--first", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--image",
                    help="with --quick: this NAME.img.xz (its NAME.build.json next to it)")
    ap.add_argument("--work-dir", default=os.path.join(REPO, "image-builder", "build-cache"))
    ap.add_argument("--out-dir", default=os.path.join(REPO, "image-builder", "out"))
    ap.add_argument("--floor-profile", default="base",
                    help="profile measured as the floor in the same run ('none': skip)")
    ap.add_argument("--rebuild-var", metavar="VAR=VALUE",
                    help="measure a rebuild with this role variable changed (one no "
                    "package task reads) against the first build; no boot, no floor")
    ap.add_argument("--from-log", metavar="BUILD_LOG",
                    help="only summarize a build.py log (stage and task times) into JSON")
    ap.add_argument("--min-task-s", type=float, default=10,
                    help="with --from-log: keep the tasks that took at least this long")
    ap.add_argument("--machine-note", default="shared with other helpers' tests and builds",
                    help="with --from-log: the load the build ran under")
    args = ap.parse_args()
    if args.from_log:
        return from_log(args)
    if os.geteuid() != 0:
        raise SystemExit("bench/image_build.py needs root (it runs the image builder)")
    if args.rebuild_var:
        return rebuild(args)
    rec = measure(args.profile, args)
    floor = None if args.floor_profile == "none" else measure(args.floor_profile, args)
    boot_res = rec["boot"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def build_view(r):
        return {"stages_s": r["stages_s"], "total_s": r["total_s"], "wall_s": r["wall_s"],
                "measured_now": r["measured_now"],
                "debootstrap_cache": r.get("debootstrap_cache"),
                "package_layer": r.get("package_layer"),
                # build.py --resume: bootstrap and base were not run, total_s is partial.
                "resumed": r.get("resumed")}

    load = os.getloadavg()
    summary = {
        "benchmark": "image_build", "profile": rec["profile"], "quick": args.quick,
        "cold": args.cold, "first": args.first, "host_cpus": os.cpu_count(), "time": stamp,
        "loadavg_at_end": [round(x, 2) for x in load],
        "image": os.path.basename(rec["image"]),
        "build": build_view(rec),
        "sizes": {"xz_bytes": rec["xz_bytes"], "image_bytes": rec["image_mib"] * MIB,
                  "root_partition_bytes": rec["root_partition_mib"] * MIB,
                  "root_tree_bytes": rec["root_tree_bytes"]},
        "boot": boot_res,
        "targets": {"build_s_max": TARGET_BUILD_S, "xz_bytes_max": TARGET_XZ_BYTES},
    }
    if floor:
        summary["floor"] = {"profile": floor["profile"], "image": os.path.basename(floor["image"]),
                            "build": build_view(floor), "boot": floor["boot"],
                            "xz_bytes": floor["xz_bytes"],
                            "root_tree_bytes": floor["root_tree_bytes"]}
        summary["ratios_to_floor"] = {
            "build_total": ratio(rec["total_s"], floor["total_s"]),
            "login_prompt": ratio(boot_res["login_prompt_s"], floor["boot"]["login_prompt_s"]),
            "ssh_login": ratio(boot_res["ssh_login_s"], floor["boot"]["ssh_login_s"]),
            "root_tree": ratio(rec["root_tree_bytes"], floor["root_tree_bytes"]),
        }
    summary["targets_met"] = {
        # None: not measurable from a resumed (partial) build.
        "build_time": None if rec.get("resumed") else rec["total_s"] <= TARGET_BUILD_S,
        "xz_size": rec["xz_bytes"] <= TARGET_XZ_BYTES,
        "booted": boot_res["ssh_login_s"] is not None,
    }
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"image_build-{rec['profile']}-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    plot(summary, base + ".png")
    summary["results"] = [base + ".json", base + ".png"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
