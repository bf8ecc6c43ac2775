"""A generic service runs ConPaaS's contract: init.sh once, run.sh, and
notify.sh with the peer list whenever the set of instances changes; its TCP
endpoint goes through every access point's HAProxy."""
import io
import subprocess
import sys
import tarfile

from tests.functional.conftest import wait_op

RUN = b"""#!/bin/sh
exec python3 - <<'PY'
import os, socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().strip()
        self.wfile.write(b"echo " + line + b" from " + os.environ["MY_IP"].encode() + b"\\n")
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
S(("0.0.0.0", 8080), H).serve_forever()
PY
"""
INIT = b"#!/bin/sh\necho \"init ran as $MY_ROLE on $MY_IP\" > /var/lib/service/init\n"
NOTIFY = b"#!/bin/sh\necho \"peers now: $PEERS\"\n"


def bundle(path):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("run.sh", RUN), ("init.sh", INIT), ("notify.sh", NOTIFY)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def tcp_echo(edge, ap, port, text):
    ap_addr, _ = edge.net.client_addresses(ap)
    code = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),5)\n"
            "s.sendall(sys.argv[3].encode()+b'\\n')\nprint(s.makefile().readline().strip())")
    res = subprocess.run(["ip", "netns", "exec", edge.net.client_netns(ap), sys.executable,
                          "-c", code, ap_addr, str(port), text],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_generic_service_contract(tmp_path, edge, admin):
    wait_op(admin, admin.create_service("generic", "echo", node="ap-2",
                                        bundle=bundle(str(tmp_path / "echo.tar.gz"))))
    svc = admin.service("echo")
    first = svc["instances"][0]["address"]
    assert tcp_echo(edge, "ap-1", svc["port"], "hello") == "echo hello from " + first
    wait_op(admin, admin.scale("echo", 2))
    svc = admin.service("echo")
    addrs = sorted(i["address"] for i in svc["instances"])
    logs = {e["instance"]: e["log"] for e in admin.logs("echo")}
    assert len(logs) == 2
    for log in logs.values():
        assert "running init.sh" in log and "running notify.sh" in log
        # Every instance was told about both, in its latest notification.
        last = [line for line in log.splitlines() if line.startswith("peers now:")][-1]
        assert sorted(last.split(":", 1)[1].split()) == addrs
    wait_op(admin, admin.delete_service("echo"))
