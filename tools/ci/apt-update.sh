#!/bin/bash
# `apt-get update` that waits for another apt or dpkg run to finish: apt-get's
# DPkg::Lock::Timeout makes install wait for dpkg's lock, but update fails at once on the
# lists lock ("Could not get lock /var/lib/apt/lists/lock"; checked with apt 2.6: it failed
# in 0.6 s with the lock held and the option at 60 s). Retries for up to 10 minutes while
# the lock is held; any other failure (a mirror unreachable) fails at once, with apt's words.
set -uo pipefail
for _ in $(seq 60); do
    if out=$(apt-get -q -o DPkg::Lock::Timeout=600 update 2>&1); then
        exit 0
    fi
    grep -q "Could not get lock" <<<"$out" || { echo "$out" >&2; exit 1; }
    sleep 10
done
echo "$out" >&2
echo "apt-get update: the apt lists lock stayed held for 10 minutes" >&2
exit 1
