"""The per-task and per-role times of deploy playbook runs, from their logs, as JSON.

Every playbook the deploy tests run logs ansible.posix's profile_tasks and profile_roles
summaries (tests/deploy/conftest.py ``ansible_env``); this reads them back so the docs
can cite where a run's time went:

    python3 tools/deploy/profile_summary.py NAME=LOG [NAME=LOG ...] [--note TEXT] \
        > bench/results/deploy-profile-<UTC>.json

For each run: its wall time (profile_tasks' elapsed counter at the end), the recap of
each host, the top tasks (a task of several plays or hosts is summed under one name) and
every role's total.
"""
import argparse
import collections
import json
import os
import platform
import re
import sys

TIMESTAMP = re.compile(r"^\w+day \d+ \w+ \d+\s+[\d:]+ \+\d{4} \(([\d:.]+)\)\s+([\d:.]+) \*+")
SUMMARY_LINE = re.compile(r"^(.+?) -+ ([\d.]+)s\s*$")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def seconds(hms):
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def slug(name):
    """A key the docs' ``.. bench:`` citations can name: "role : Task name" ->
    "role__task_name"."""
    role, _, task = name.rpartition(" : ")
    text = (role + "__" if role else "") + task
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")


def parse(path, top=15):
    with open(path) as f:
        lines = f.read().splitlines()
    elapsed = [seconds(m.group(2)) for m in map(TIMESTAMP.match, lines) if m]
    # The two summaries follow the last "=====" rules: tasks first, then roles.
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    if len(rules) < 2:
        raise SystemExit("%s: no profile_tasks/profile_roles summary" % path)

    def block(start):
        out = []
        for line in lines[start + 1:]:
            m = SUMMARY_LINE.match(line)
            if not m:
                break
            out.append((m.group(1).strip(), float(m.group(2))))
        return out
    tasks = collections.Counter()
    for name, secs in block(rules[-2]):
        tasks[name] += secs
    roles = dict(block(rules[-1]))
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                          "unreachable": int(m.group(4)), "failed": int(m.group(5))}
             for m in map(RECAP.match, lines) if m}
    return {"log": os.path.basename(path), "wall_s": round(max(elapsed), 1) if elapsed else None,
            "recap": recap,
            "top_tasks_s": {slug(name): round(secs, 1) for name, secs in tasks.most_common(top)},
            "task_names": {slug(name): name for name, _ in tasks.most_common(top)},
            "roles_s": {name: round(secs, 1) for name, secs in roles.items()},
            "summary_limit": "profile_tasks lists its slowest 40 task runs; a task's time "
                             "here sums its runs among those"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="NAME=LOG")
    p.add_argument("--note", default="")
    p.add_argument("--top", type=int, default=15, help="tasks kept per run (default 15)")
    args = p.parse_args(argv)
    out = {"benchmark": "deploy-profile", "note": args.note,
           "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                       "kernel": platform.release()},
           "loadavg_now": [round(x, 2) for x in os.getloadavg()], "runs": {}}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        out["runs"][name] = parse(path, args.top)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
