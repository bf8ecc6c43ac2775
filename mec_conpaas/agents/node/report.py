"""Resource report sent with every heartbeat.

The fields are those of PiCasso's monitoring agent: cpu, memory, disk,
load and per-container usage.  Read straight from /proc and statvfs: the
agent must stay small on a 1 GB Pi.
"""
import os
import time


class Reporter:

    def __init__(self, disk_path="/"):
        self.disk_path = disk_path
        self._last = self._cpu_times()

    @staticmethod
    def _cpu_times():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle, time.monotonic()

    def cpu_percent(self):
        total, idle, _ = now = self._cpu_times()
        last_total, last_idle, _ = self._last
        self._last = now
        dt = total - last_total
        return round(100.0 * (1 - (idle - last_idle) / dt), 1) if dt > 0 else 0.0

    @staticmethod
    def memory():
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
        return {"total_bytes": info["MemTotal"],
                "available_bytes": info.get("MemAvailable", info["MemFree"]),
                "swap_total_bytes": info.get("SwapTotal", 0),
                "swap_free_bytes": info.get("SwapFree", 0)}

    def disk(self):
        os.makedirs(self.disk_path, exist_ok=True)
        st = os.statvfs(self.disk_path)
        return {"path": self.disk_path, "total_bytes": st.f_blocks * st.f_frsize,
                "free_bytes": st.f_bavail * st.f_frsize}

    def report(self, containers=None):
        return {"cpu_percent": self.cpu_percent(), "cpu_count": os.cpu_count(),
                "load": list(os.getloadavg()), "memory": self.memory(),
                "disk": self.disk(), "containers": containers or {},
                "time": time.time()}
