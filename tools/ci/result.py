#!/usr/bin/env python3
"""Write one CI part's result as bench/results/ci-PART-UTC.json.

tools/run-tests.sh calls it after each part with the part's wall time, its
exit status and the JUnit XML files pytest wrote (``--junitxml``, one per
pytest run of the part), so that the CI times and test counts the docs give
are read from a file (tests/unit/test_docs_figures.py checks them), not
typed in.  The machine and its load are recorded with them: CI runs on a
2-core machine that other jobs may share.

Usage: result.py PART RC START_EPOCH END_EPOCH LOADAVG_AT_START OUT_DIR [XML...]
Standard library only: it runs with the system's python3 before any venv.
"""
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET


def counts(paths):
    """Sum of pytest's JUnit counters over ``paths``; a missing file (the
    part stopped before its pytest ran) counts nothing and is named."""
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time_s": 0.0}
    runs, missing, files = [], [], {}
    for path in paths:
        if not os.path.exists(path):
            missing.append(os.path.basename(path))
            continue
        root = ET.parse(path).getroot()
        suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
        run = {"file": os.path.basename(path), "tests": 0, "failures": 0,
               "errors": 0, "skipped": 0, "time_s": 0.0}
        for suite in suites:
            for key in ("tests", "failures", "errors", "skipped"):
                run[key] += int(suite.get(key, 0))
            run["time_s"] += float(suite.get("time", 0))
            for case in suite.iter("testcase"):
                # "tests.functional.test_chaos" -> "tests/functional/test_chaos"
                name = case.get("classname", "").split(".Test")[0].replace(".", "/")
                files[name] = files.get(name, 0.0) + float(case.get("time", 0))
        run["passed"] = run["tests"] - run["failures"] - run["errors"] - run["skipped"]
        run["time_s"] = round(run["time_s"], 1)
        runs.append(run)
        for key in total:
            total[key] += run[key]
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    total["time_s"] = round(total["time_s"], 1)
    return total, runs, missing, {k: round(v, 1) for k, v in sorted(files.items())}


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv):
    part, rc, start, end, load_start, out = argv[:6]
    total, runs, missing, files = counts(argv[6:])
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    utc = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(end)))
    result = {
        "benchmark": "ci", "part": part, "utc": utc, "commit": commit(),
        "exit_status": int(rc), "wall_s": int(end) - int(start),
        "tests": total, "pytest_runs": runs, "pytest_runs_missing": missing,
        "test_files_s": files,
        "machine": {"cpus": os.cpu_count(), "mem_gb": round(mem_kb / 2 ** 20, 1),
                    "kernel": platform.release(), "machine": platform.machine()},
        "loadavg_at_start": [float(x) for x in load_start.split()[:3]],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "ci": os.environ.get("CI") == "true",
        "note": "wall time of %s %s, installs included; the machine may be shared "
                "with other jobs (see the load averages)"
                % (os.environ.get("MEC_CI_RESULT_RUNNER", "tools/run-tests.sh"), part),
    }
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "ci-%s-%s.json" % (part, utc))
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print("%s: %d passed, %d skipped, %d failed, %d errors in %d s -> %s" % (
        part, total["passed"], total["skipped"], total["failures"], total["errors"],
        result["wall_s"], path))


if __name__ == "__main__":
    main(sys.argv[1:])
