#!/bin/bash
# Test bed for the MEC-ConPaaS playbooks: Debian 12 LXC system containers running systemd,
# one master and N AP nodes on a private bridge, reached over SSH by Ansible.
#
#   tools/deploy/testbed.sh up [N_AP]   create bridges, apt cache proxy, containers; write inventory
#   tools/deploy/testbed.sh down        stop and destroy everything 'up' created
#   tools/deploy/testbed.sh status
#
# Only traffic between this machine and the containers it creates: the containers reach the
# Debian mirror through an apt-cacher-ng bound to the bridge address (no NAT, no route out).
# Nested libvirt LXC (nova-compute-lxc) inside the containers needs, on this kind of host
# (cgroup v1 with cpu and cpuacct mounted as separate hierarchies, an empty cgroup2 at
# /sys/fs/cgroup/unified):
#   * /dev/fuse, /dev/loop-control and /dev/loop* in the container and allowed by its cgroup;
#   * cpu and cpuacct mounted separately inside (the container's systemd only knows the
#     joint "cpu,cpuacct" layout, fails to mount them and leaves symlinks): a oneshot unit
#     written here, ordered before libvirtd, fixes the mounts;
#   * libvirt not using systemd-machined: machined can only place the instance in the
#     controllers systemd manages (not cpu/cpuacct here), and libvirt then rejects the
#     cgroup ("No valid cgroup for machine"). A dpkg path-exclude drops machined's D-Bus
#     activation file, so libvirt creates the cgroups itself.
# These are properties of this test host, not of a Raspberry Pi, so they live here and not
# in the roles.
set -euo pipefail

STATE=${MEC_DEPLOY_STATE:-/var/tmp/mec-deploy-testbed}
PREFIX=${MEC_DEPLOY_PREFIX:-mecci}
BR=${MEC_DEPLOY_BRIDGE:-mecdep0}
PBR=${MEC_DEPLOY_PROVIDER_BRIDGE:-mecdep1}
NET=${MEC_DEPLOY_NET:-10.231.0}
HOSTIP=$NET.1
ACNG_PORT=3142
BASE=$PREFIX-base
REPO=$(cd "$(dirname "$0")/../.." && pwd)

log() { echo "[testbed $(date +%T)] $*" >&2; }

container_conf() {  # name ip mac-suffix [hostname]
    local name=$1 ip=$2 n=$3 uts=${4:-$1}
    cat <<CONF
lxc.include = /usr/share/lxc/config/debian.common.conf
lxc.arch = amd64
lxc.uts.name = $uts
lxc.rootfs.path = dir:/var/lib/lxc/$name/rootfs
lxc.tty.max = 4
lxc.pty.max = 1024
lxc.apparmor.profile = unconfined
lxc.mount.auto = proc:rw sys:rw cgroup:rw
lxc.cgroup.devices.allow = b 7:* rwm
lxc.cgroup.devices.allow = c 10:237 rwm
lxc.cgroup.devices.allow = c 10:229 rwm
lxc.cgroup.devices.allow = c 10:200 rwm
lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file 0 0
lxc.mount.entry = /dev/net/tun dev/net/tun none bind,create=file 0 0
lxc.net.0.type = veth
lxc.net.0.link = $BR
lxc.net.0.name = eth0
lxc.net.0.flags = up
lxc.net.0.hwaddr = 02:4d:43:00:00:$(printf %02x "$n")
lxc.net.0.ipv4.address = $ip/24
lxc.net.1.type = veth
lxc.net.1.link = $PBR
lxc.net.1.name = eth1
lxc.net.1.flags = up
lxc.net.1.hwaddr = 02:4d:43:01:00:$(printf %02x "$n")
CONF
}

prepare_rootfs() {  # rootfs
    local r=$1
    echo "Acquire::http::Proxy \"http://$HOSTIP:$ACNG_PORT\";" > "$r/etc/apt/apt.conf.d/01testbed-proxy"
    printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' > "$r/etc/apt/sources.list"
    mkdir -p "$r/etc/dpkg/dpkg.cfg.d" "$r/etc/systemd/system/sysinit.target.wants" "$r/root/.ssh" "$r/usr/local/sbin"
    echo 'path-exclude=/usr/share/dbus-1/system-services/org.freedesktop.machine1.service' > "$r/etc/dpkg/dpkg.cfg.d/testbed-no-machined"
    rm -f "$r/usr/share/dbus-1/system-services/org.freedesktop.machine1.service"
    cat > "$r/usr/local/sbin/testbed-cgroup-fix" <<'FIX'
#!/bin/sh
# cpu and cpuacct are separate hierarchies on the test host (see tools/deploy/testbed.sh).
# Also create loop device nodes for nova's loop-mounted root disks.
cd /sys/fs/cgroup || exit 0
mount -o remount,rw /sys/fs/cgroup 2>/dev/null
for c in cpu cpuacct; do
    if ! grep -q " /sys/fs/cgroup/$c cgroup .*[ ,]$c[ ,]" /proc/mounts; then
        [ -L "$c" ] && rm -f "$c"
        mkdir -p "$c" && mount -t cgroup -o "$c" cgroup "$c"
    fi
done
[ -e /dev/loop-control ] || mknod /dev/loop-control c 10 237
for i in $(seq 0 15); do [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i; done
# LXC bind-mounts a file over /proc/sys/kernel/random/boot_id.  The kernel refuses a
# new proc mount in a user namespace while a file is mounted over part of the
# visible one (mount_too_revealing), so the node agent's user-namespaced instances
# failed to start ("Failed to mount proc on /proc ... Operation not permitted").
# A real Pi has no such mount.
umount /proc/sys/kernel/random/boot_id 2>/dev/null
exit 0
FIX
    chmod 755 "$r/usr/local/sbin/testbed-cgroup-fix"
    cat > "$r/etc/systemd/system/testbed-cgroup-fix.service" <<'UNIT'
[Unit]
Description=Test bed: separate cpu/cpuacct cgroup mounts, loop devices, a proc that user namespaces may mount
DefaultDependencies=no
After=sys-fs-cgroup.mount local-fs.target
Before=sysinit.target libvirtd.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/testbed-cgroup-fix
[Install]
WantedBy=sysinit.target
UNIT
    ln -sf ../testbed-cgroup-fix.service "$r/etc/systemd/system/sysinit.target.wants/testbed-cgroup-fix.service"
    install -m 600 "$STATE/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
    # No default route and no resolver: the test hosts talk only to each other and to the
    # apt proxy on the bridge (a lookup fails at once instead of timing out; RabbitMQ's and
    # Erlang's name lookups hung for minutes with an unreachable nameserver).
    : > "$r/etc/resolv.conf"
    {
        printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
        printf '%s\tmaster\n' "$NET.10"
        for i in $(seq 1 "$(cat "$STATE/n_ap")"); do printf '%s\tap-%s\n' "$NET.$((10 + i))" "$i"; done
    } > "$r/etc/hosts"
    # LXC configures eth0/eth1 itself: no DHCP client holding up boot (and SSH) for minutes
    printf 'auto lo\niface lo inet loopback\niface eth0 inet manual\niface eth1 inet manual\n' > "$r/etc/network/interfaces"
    if [ -x "$r/usr/bin/ssh-keygen" ]; then
        rm -f "$r"/etc/ssh/ssh_host_*
        chroot "$r" ssh-keygen -A >/dev/null
    fi
    chmod 700 "$r/root/.ssh"
    # a first password, to prove that the common role removes it (the test checks sshd refuses passwords)
    chroot "$r" sh -c 'echo root:testbed-password | chpasswd'
}

start_acng() {
    mkdir -p "$STATE/acng/cfg" "$STATE/acng/log" /var/cache/mec-deploy-acng-$PREFIX
    cat > "$STATE/acng/cfg/acng.conf" <<ACNG
CacheDir: /var/cache/mec-deploy-acng-$PREFIX
LogDir: $STATE/acng/log
SupportDir: /usr/lib/apt-cacher-ng
Port: $ACNG_PORT
BindAddress: $HOSTIP
ExThreshold: 4
PassThroughPattern: ^$
ACNG
    chown -R apt-cacher-ng: "$STATE/acng" /var/cache/mec-deploy-acng-$PREFIX
    if [ -f "$STATE/acng.pid" ] && kill -0 "$(cat "$STATE/acng.pid")" 2>/dev/null; then return; fi
    # its own session: a kept test bed (MEC_DEPLOY_KEEP) keeps its mirror after the run
    setsid apt-cacher-ng -c "$STATE/acng/cfg" ForeGround=1 >"$STATE/acng/out.log" 2>&1 &
    echo $! > "$STATE/acng.pid"
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://$HOSTIP:$ACNG_PORT/acng-report.html" && return
        sleep 0.2
    done
    log "apt-cacher-ng did not start"; exit 1
}

wait_ssh() {
    local ip=$1
    for _ in $(seq 120); do
        if ssh -i "$STATE/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
               -o BatchMode=yes -o ConnectTimeout=2 -o LogLevel=ERROR root@"$ip" \
               'systemctl is-system-running --wait >/dev/null 2>&1; true' 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    log "no SSH on $ip"; return 1
}

up() {
    local n_ap=${1:-2}
    mkdir -p "$STATE"
    echo "$n_ap" > "$STATE/n_ap"
    [ -f "$STATE/swappiness.orig" ] || cat /proc/sys/vm/swappiness > "$STATE/swappiness.orig"
    [ -f "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C mec-deploy-testbed -f "$STATE/id_ed25519"
    if ! ip link show "$BR" >/dev/null 2>&1; then
        ip link add "$BR" type bridge && ip addr add "$HOSTIP/24" dev "$BR" && ip link set "$BR" up
    fi
    if ! ip link show "$PBR" >/dev/null 2>&1; then
        ip link add "$PBR" type bridge && ip link set "$PBR" up
    fi
    start_acng
    if ! lxc-info -n "$BASE" >/dev/null 2>&1; then
        log "creating $BASE (lxc-create -t debian -r bookworm)"
        container_conf "$BASE" "$NET.9" 9 | grep -v '^lxc.rootfs.path' > "$STATE/base.conf"
        MIRROR=http://deb.debian.org/debian http_proxy="http://$HOSTIP:$ACNG_PORT" \
            lxc-create -n "$BASE" -f "$STATE/base.conf" -t debian -- -r bookworm >"$STATE/base-create.log" 2>&1
        prepare_rootfs "/var/lib/lxc/$BASE/rootfs"
        chroot "/var/lib/lxc/$BASE/rootfs" sh -c 'apt-get -q update && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends python3 ca-certificates curl openssh-server && apt-get clean' \
            >>"$STATE/base-create.log" 2>&1
    fi
    local names=("$PREFIX-master") ips=("$NET.10") i
    for i in $(seq 1 "$n_ap"); do names+=("$PREFIX-ap-$i"); ips+=("$NET.$((10 + i))"); done
    for i in "${!names[@]}"; do
        local name=${names[$i]} ip=${ips[$i]}
        if ! lxc-info -n "$name" >/dev/null 2>&1; then
            log "copying $BASE to $name"
            lxc-copy -n "$BASE" -N "$name" >/dev/null
            container_conf "$name" "$ip" $((10 + i)) "${name#"$PREFIX"-}" > "/var/lib/lxc/$name/config"
            prepare_rootfs "/var/lib/lxc/$name/rootfs"
        fi
        [ "$(lxc-info -n "$name" -sH)" = RUNNING ] || lxc-start -n "$name"
    done
    for i in "${!names[@]}"; do wait_ssh "${ips[$i]}"; done
    write_inventory "$n_ap"
    log "up: ${names[*]}; inventory $STATE/inventory.yml"
}

write_inventory() {
    local n_ap=$1 i
    {
        echo "# Written by tools/deploy/testbed.sh: the LXC test bed (master + $n_ap AP nodes)."
        echo "all:"
        echo "  vars:"
        echo "    ansible_user: root"
        echo "    ansible_ssh_private_key_file: $STATE/id_ed25519"
        echo "    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        echo "    mec_conpaas_testbed: true"
        echo "    common_apt_proxy: http://$HOSTIP:$ACNG_PORT"
        echo "    mec_conpaas_provider_interface: eth1"
        # The PaaS on the openstack driver (nova backend on the APs, keystone tenancy), the
        # roles' default with a controller; MEC_DEPLOY_OPENSTACK=0: the lxc driver.
        echo "    mec_conpaas_use_openstack: ${MEC_DEPLOY_OPENSTACK:-1}"
        echo "    common_ssh_authorized_keys: ['$(cat "$STATE/id_ed25519.pub")']"
        echo "  children:"
        echo "    master:"
        echo "      hosts:"
        echo "        master:"
        echo "          ansible_host: $NET.10"
        echo "          mec_conpaas_backbone_address: $NET.10"
        echo "    edge:"
        echo "      hosts:"
        for i in $(seq 1 "$n_ap"); do
            echo "        ap-$i:"
            echo "          ansible_host: $NET.$((10 + i))"
            echo "          mec_conpaas_backbone_address: $NET.$((10 + i))"
            echo "          wifi_ap_address: 10.42.$i.1"
            echo "          wifi_ap_channel: $(( (i - 1) % 3 * 5 + 1 ))"
        done
    } > "$STATE/inventory.yml"
    ln -sfn "$REPO/etc/inventory/testbed/group_vars" "$STATE/group_vars"
}

down() {
    local name
    for name in $(lxc-ls -1 2>/dev/null | grep "^$PREFIX-" || true); do
        [ "$name" = "$BASE" ] && [ -z "${MEC_DEPLOY_DESTROY_BASE:-}" ] && continue
        log "destroying $name"
        lxc-stop -n "$name" -k >/dev/null 2>&1 || true
        lxc-destroy -n "$name" -f >/dev/null 2>&1 || lxc-destroy -n "$name" >/dev/null 2>&1 || true
    done
    if [ -f "$STATE/acng.pid" ]; then
        kill "$(cat "$STATE/acng.pid")" 2>/dev/null || true
        rm -f "$STATE/acng.pid"
    fi
    ip link del "$BR" 2>/dev/null || true
    ip link del "$PBR" 2>/dev/null || true
    # Loop devices nova-compute attached inside the AP containers for its LXC instances'
    # disks outlive the containers (their files are gone with the rootfs): the host shows
    # them as /var/lib/nova/instances/<uuid>/disk (deleted). No nova runs on the test host.
    local dev
    for dev in $(losetup -l -n -O NAME,BACK-FILE 2>/dev/null \
                 | awk '$2 ~ "^/var/lib/nova/instances/" && / \(deleted\)$/ {print $1}' || true); do
        log "detaching $dev (a nova instance disk of the test bed)"
        losetup -d "$dev" 2>/dev/null || true
    done
    if [ -f "$STATE/swappiness.orig" ]; then
        # vm.swappiness is not namespaced: the edge_tuning role in a container changed the host's
        sysctl -qw vm.swappiness="$(cat "$STATE/swappiness.orig")" || true
        rm -f "$STATE/swappiness.orig"
    fi
    log "down"
}

status() {
    lxc-ls -f 2>/dev/null | grep -E "^(NAME|$PREFIX-)" || true
    ip -br addr show "$BR" 2>/dev/null || true
}

case ${1:-} in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up [N_AP] | down | status" >&2; exit 2 ;;
esac
