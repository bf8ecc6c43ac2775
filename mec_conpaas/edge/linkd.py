"""A delay line for kernels without ``sch_netem``.

iptables sends a link's packets to an NFQUEUE; this daemon holds each
packet for the link's configured one-way latency and then accepts it.
Without ``--queue-bypass`` on the rules, packets are dropped while the
daemon is not running: a dead shaper shows as a broken link, never as
silently unshaped traffic.
"""
import heapq
import itertools
import json
import os
import threading
import time


class DelayLine:

    def __init__(self, queues, status_file=None):
        self.queues = queues  # {queue_num: delay_ms}
        self.status_file = status_file
        self.heap = []
        self.seq = itertools.count()
        self.cond = threading.Condition()
        self.counts = {q: 0 for q in queues}

    def _callback(self, qnum, delay):
        def cb(pkt):
            due = time.monotonic() + delay
            with self.cond:
                heapq.heappush(self.heap, (due, next(self.seq), pkt))
                self.counts[qnum] += 1
                self.cond.notify()
        return cb

    def _release(self):
        while True:
            with self.cond:
                while not self.heap:
                    self.cond.wait()
                due, _, pkt = self.heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.cond.wait(wait)
                    continue
                heapq.heappop(self.heap)
            pkt.accept()

    def _status(self):
        while self.status_file:
            tmp = self.status_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "time": time.time(),
                           "scheduling": getattr(self, "scheduling", None),
                           "queues": {str(q): {"delay_ms": d,
                                               "packets": self.counts[q]}
                                      for q, d in self.queues.items()}}, f)
            os.replace(tmp, self.status_file)
            time.sleep(1)

    @staticmethod
    def _realtime():
        """The delay line stands in for a wire: let it preempt ordinary
        processes so machine load does not turn into link jitter (the
        kernel's RT throttling still keeps CPU for everyone else)."""
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            return "SCHED_FIFO"
        except (OSError, AttributeError):
            try:
                os.nice(-15)
                return "nice -15"
            except OSError:
                return "default"

    def run(self):
        from netfilterqueue import NetfilterQueue
        self.scheduling = self._realtime()
        threading.Thread(target=self._release, daemon=True).start()
        threading.Thread(target=self._status, daemon=True).start()
        handles = []
        for qnum, delay_ms in self.queues.items():
            nfq = NetfilterQueue()
            nfq.bind(qnum, self._callback(qnum, delay_ms / 1000.0), max_len=8192)
            handles.append(nfq)
        threads = [threading.Thread(target=h.run, daemon=True) for h in handles[1:]]
        for t in threads:
            t.start()
        handles[0].run()
