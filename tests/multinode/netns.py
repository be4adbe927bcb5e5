"""Test "nodes" built from Linux network namespaces, and MPI jobs launched across them.

Layout of a cluster of n nodes (all names carry a per-process tag, so concurrent test runs and
other users' namespaces never collide):

    <tag>-sw        a namespace holding only a bridge (the "switch"); nothing else lives there
    <tag>-n<i>      node i: loopback and eth0, a veth whose peer is a port of the switch's bridge,
                    address 10.77.0.<i+1>/24, hostname node<i> (each process started there gets
                    its own UTS namespace); /etc/netns/<tag>-n<i>/hosts names every node

No interface is added to the machine's own namespace and no route leads out of the cluster, so
test traffic stays between the namespaces created here. `down()` kills every process left in them,
deletes them and their /etc/netns files; it runs on normal exit, on errors and (atexit) when the
test process itself ends. A cluster left by a killed test run (its tag's pid is gone) is removed
at the next start.

Jobs: hydra's mpiexec runs in node 0 (like mpirun on the first node of an allocation) and starts
one proxy per host through ns-launch.sh, which enters that host's namespace. Ranks on one node
talk through shared memory, ranks on different nodes over TCP through the bridge.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = os.path.join(HERE, "ns-launch.sh")
PREFIX = "radmmt"           # namespace names: radmmt<pid>-n<i>, radmmt<pid>-sw
SUBNET = "10.77.0"


class Unavailable(Exception):
    """Namespaces cannot be built here (the reason is the message)."""


def _ip(*args, check=True):
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """None when this process can build network namespaces, else why not."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "hostname", "mount"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if proc.returncode:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    proc = subprocess.run(["unshare", "--uts", "--ipc", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode:
        return f"cannot create UTS/IPC/PID namespaces: {proc.stderr.strip()}"
    return None


def remove_stale() -> None:
    """Delete namespaces of earlier test runs whose process is gone (a killed pytest)."""
    out = _ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({PREFIX}(\d+)-\S+)", out, flags=re.M):
        ns, pid = name
        if int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _kill_ns(ns)
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def _ns_pids(ns: str) -> list:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def _kill_ns(ns: str, sig=signal.SIGKILL) -> list:
    pids = _ns_pids(ns)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


class Cluster:
    def __init__(self, nodes: int):
        self.n = nodes
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.ns = [f"{self.tag}-n{i}" for i in range(nodes)]
        self.subnet = SUBNET
        self.addr = [f"{SUBNET}.{i + 1}" for i in range(nodes)]
        self.hostname = [f"node{i}" for i in range(nodes)]
        self.dir = None
        self.map = None
        self._up = False

    # ---- building and tearing down -------------------------------------------------------------
    def up(self) -> "Cluster":
        remove_stale()
        atexit.register(self.down)
        self._up = True
        self.dir = tempfile.mkdtemp(prefix="radmm-netns-")
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            hosts = "127.0.0.1 localhost\n" + "".join(
                f"{a} {h}\n" for a, h in zip(self.addr, self.hostname))
            for i, ns in enumerate(self.ns):
                _ip("netns", "add", ns)
                # the pair is created with one end in the node and the other in the switch
                _ip("link", "add", "eth0", "netns", ns, "type", "veth",
                    "peer", "name", f"port{i}", "netns", self.switch)
                _ip("-n", self.switch, "link", "set", f"port{i}", "master", "br0")
                _ip("-n", self.switch, "link", "set", f"port{i}", "up")
                _ip("-n", ns, "addr", "add", f"{self.addr[i]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                os.makedirs(f"/etc/netns/{ns}", exist_ok=True)   # ip netns exec binds it on /etc/hosts
                with open(f"/etc/netns/{ns}/hosts", "w") as fh:
                    fh.write(hosts)
            self.map = os.path.join(self.dir, "hosts.map")
            with open(self.map, "w") as fh:
                fh.writelines(f"{a} {ns} {h}\n" for a, ns, h in zip(self.addr, self.ns, self.hostname))
            self._wait_links()
        except BaseException:
            self.down()
            raise
        return self

    def _wait_links(self, timeout=20.0) -> None:
        """Until every node can open a TCP connection to node 0 (the bridge ports forward)."""
        probe = ("import socket,sys\ns=socket.socket();s.settimeout(1)\n"
                 "try:\n s.connect((sys.argv[1],9))\nexcept ConnectionRefusedError:\n sys.exit(0)\n"
                 "except OSError:\n sys.exit(1)\n")
        deadline = time.monotonic() + timeout
        for i in range(1, self.n):
            while True:
                ok = subprocess.run(["ip", "netns", "exec", self.ns[i], sys.executable, "-c", probe,
                                     self.addr[0]], capture_output=True, timeout=30).returncode == 0
                if ok:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {i} cannot reach node 0 over the bridge")
                time.sleep(0.2)

    def down(self) -> None:
        if not self._up:
            return
        self._up = False
        for ns in self.ns + [self.switch]:
            for _ in range(3):
                if not _kill_ns(ns):
                    break
                time.sleep(0.2)
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    # ---- jobs ----------------------------------------------------------------------------------
    def exec_argv(self, node: int, argv: list) -> list:
        """argv run as a process of `node` (through the same launcher as hydra's proxies)."""
        return [LAUNCH, self.addr[node], shlex.join(argv)]

    def mpiexec_argv(self, per_node, argv: list) -> list:
        """mpiexec started in node 0 placing per_node[i] ranks on node i (ranks in node order)."""
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        hosts = ",".join(f"{self.addr[i]}:{k}" for i, k in enumerate(per_node) if k)
        return self.exec_argv(0, [mpiexec, "-launcher", "ssh", "-launcher-exec", LAUNCH,
                                  "-localhost", self.addr[0], "-hosts", hosts,
                                  "-n", str(sum(per_node)), *argv])

    def env(self, extra=None) -> dict:
        """The job's environment: ours, the host map for ns-launch.sh, one thread per rank."""
        env = dict(os.environ, RADMM_NETNS_MAP=self.map, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("SLURM_JOB_ID", None)
        for k, v in (extra or {}).items():   # None unsets
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def run(self, per_node, argv, timeout=300, env=None, cwd=None) -> subprocess.CompletedProcess:
        """Run an MPI job to completion; an overrun kills everything in the nodes and raises."""
        proc = self.start(per_node, argv, env=env, cwd=cwd)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_jobs()
            out, err = proc.communicate()
            raise AssertionError(f"job ran past {timeout} s: {' '.join(argv)}\n{err[-3000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, per_node, argv, env=None, cwd=None) -> subprocess.Popen:
        return subprocess.Popen(self.mpiexec_argv(per_node, argv), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(env), cwd=cwd)

    def kill_jobs(self) -> None:
        for ns in self.ns:
            _kill_ns(ns)

    # ---- faults and observations ---------------------------------------------------------------
    def pids(self, node: int) -> list:
        return _ns_pids(self.ns[node])

    def ranks(self, node: int, marker: str = "radmm_hpc") -> list:
        """Pids of a node's processes whose command line contains `marker` (the ranks, not the
        launcher's proxy)."""
        out = []
        for pid in self.pids(node):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        out.append(pid)
            except OSError:
                pass
        return out

    def kill_node(self, node: int) -> list:
        """SIGKILL every process of a node (the node dies); returns their pids."""
        return _kill_ns(self.ns[node])

    def set_link(self, node: int, up: bool) -> None:
        """Take a node's only link down (a partition: its processes live on) or back up."""
        _ip("-n", self.ns[node], "link", "set", "eth0", "up" if up else "down")

    def routes(self, node: int) -> list:
        out = _ip("-n", self.ns[node], "route", "show").stdout
        return [" ".join(line.split()) for line in out.splitlines() if line.strip()]

    def iface_bytes(self, node: int) -> dict:
        """{interface: (rx_bytes, tx_bytes)} in a node's namespace."""
        out = subprocess.run(["ip", "netns", "exec", self.ns[node], "cat", "/proc/net/dev"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        stats = {}
        for line in out.splitlines()[2:]:
            name, rest = line.split(":", 1)
            f = rest.split()
            stats[name.strip()] = (int(f[0]), int(f[8]))
        return stats
