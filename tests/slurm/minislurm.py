"""A real single-node Slurm (munged, slurmctld, slurmd) in a temporary directory, for tests.

Follows docs/slurm.md and the recipe in the project's HPC notes: Debian packages slurm-wlm and munge
(tests/slurm/install-slurm.sh), run as root; everything else lives in a temporary directory: its
own MUNGE key and socket, slurm.conf (clients find it through SLURM_CONF), state, spool and logs,
ports chosen free at start-up. Nothing under /etc is changed and no system service is touched.

    with MiniSlurm() as cluster:          # starts the daemons, waits until the node is idle
        jid = cluster.sbatch(["job.sbatch"], cwd=..., env=...)
        cluster.wait_for(jid, {"COMPLETED"}, timeout=60)

Every wait has a deadline. `stop()` cancels what is left in the queue, asks the daemons to stop
(`scontrol shutdown`), then ends whatever still runs by pid: the daemons it started, and any
process (slurmstepd, job) whose environment carries this cluster's SLURM_CONF path.

Also a command line for trying the job scripts by hand:
    python tests/slurm/minislurm.py up DIR     # start; prints `export SLURM_CONF=...`
    python tests/slurm/minislurm.py down DIR   # stop (by the pids recorded in DIR)
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INSTALL = os.path.join(HERE, "install-slurm.sh")
SBIN = ("/usr/sbin", "/sbin")


class SlurmUnavailable(Exception):
    """Slurm cannot be brought up here (not root, no apt, install failed): a reason to skip."""


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":" + ":".join(SBIN))


def ensure_installed(timeout: float = 900) -> None:
    """Install slurm-wlm and munge when missing (idempotent); SlurmUnavailable when impossible."""
    if sys.platform != "linux":
        raise SlurmUnavailable("the Slurm tests need Linux")
    if os.geteuid() != 0:
        raise SlurmUnavailable("the Slurm tests run slurmctld/slurmd/munged and need root "
                               "(they run in CI, which is root)")
    try:
        proc = subprocess.run(["bash", INSTALL], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"installing slurm-wlm and munge took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["install-slurm.sh failed"])[-1]
        raise SlurmUnavailable(f"cannot install slurm-wlm and munge: {why}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class MiniSlurm:
    def __init__(self, root: str | None = None, cpus: int = 16, partition: str = "test"):
        self.root = os.path.abspath(root) if root else tempfile.mkdtemp(prefix="radmm-slurm-")
        self.own_root = root is None
        self.cpus = cpus
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.root, "slurm.conf")
        self.logdir = os.path.join(self.root, "log")
        self.munge_dir = os.path.join(self.root, "munge")
        self.munge_socket = os.path.join(self.munge_dir, "munge.socket")
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}

    # -- environment and commands -------------------------------------------------------------
    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["PATH"] = env.get("PATH", "") + ":" + ":".join(SBIN)
        env["SLURM_CONF"] = self.conf
        for k in list(env):   # a test run inside a Slurm job must not leak that job into ours
            if k.startswith("SLURM_") and k != "SLURM_CONF":
                del env[k]
        env.update(extra or {})
        return env

    def cmd(self, *args, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=self.env())
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: status {proc.returncode}: {proc.stderr.strip()}")
        return proc

    # -- start ---------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        r = self.root
        ctld_port, slurmd_port = _free_port(), _free_port()
        while slurmd_port == ctld_port:
            slurmd_port = _free_port()
        plugindir = next((d for d in ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
                                      "/usr/lib/slurm-wlm", "/usr/lib64/slurm") if os.path.isdir(d)), None)
        lines = [
            "ClusterName=radmmtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={self.logdir}/slurmctld.log",
            f"SlurmdLogFile={self.logdir}/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "JobRequeue=1",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "MinJobAge=900",
            # Slurm's default: the time a cancelled job has to checkpoint and exit before SIGKILL
            # (10 s was too short for the 2-rank scancel test on the loaded 2-core machine)
            "KillWait=30",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.logdir}/jobcomp.txt",
            # claims more CPUs than the machine has, so that multi-rank jobs fit on 2 cores
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        if plugindir:
            lines.insert(0, f"PluginDir={plugindir}")
        with open(self.conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str], **kw) -> None:
        out = open(os.path.join(self.logdir, f"{name}.out"), "w")
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env(), start_new_session=True, **kw)
        out.close()
        self.pids[name] = self.procs[name].pid
        with open(os.path.join(self.root, "pids.json"), "w") as fh:
            json.dump(self.pids, fh)

    def _check_alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            log = open(os.path.join(self.logdir, f"{name}.out")).read()[-2000:]
            raise RuntimeError(f"{name} exited with status {p.returncode} at start-up:\n{log}")

    def start(self, timeout: float = 60) -> "MiniSlurm":
        for d in ("state", "spool", "log", "munge"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        os.chmod(self.root, 0o755)   # munged (user munge) must reach its socket directory
        try:
            munge = pwd.getpwnam("munge")
        except KeyError:
            raise SlurmUnavailable("no 'munge' user (the munge package creates it)") from None
        key = os.path.join(self.munge_dir, "munge.key")
        with open(key, "wb") as fh:
            fh.write(os.urandom(1024))
        os.chmod(key, 0o400)
        for p in (key, self.munge_dir):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o755)
        self._write_conf()
        deadline = time.monotonic() + timeout
        left = lambda: max(1.0, deadline - time.monotonic())   # noqa: E731
        self._spawn("munged", [_which("munged") or "munged", "-F", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={self.munge_dir}/munged.pid",
                               f"--log-file={self.munge_dir}/munged.log", f"--seed-file={self.munge_dir}/munged.seed"],
                    user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        _wait(lambda: (self._check_alive("munged"), os.path.exists(self.munge_socket))[1], left(),
              "munged's socket")
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-f", self.conf])
        _wait(lambda: (self._check_alive("slurmctld"),
                       self.cmd("scontrol", "ping", check=False, timeout=10).stdout.find("UP") >= 0)[1],
              left(), "slurmctld to answer `scontrol ping`", interval=0.5)
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-f", self.conf, "-N", self.node])

        def idle():
            self._check_alive("slurmd")
            out = self.cmd("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).stdout.strip()
            return out.startswith("idle")
        _wait(idle, left(), "the node to be idle in sinfo", interval=0.5)
        return self

    # -- jobs ----------------------------------------------------------------------------------
    def sbatch(self, args: list[str], cwd: str, env: dict | None = None, timeout: float = 30) -> str:
        proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=timeout,
                              cwd=cwd, env=self.env(env))
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]

    def job(self, jid: str) -> dict:
        """`scontrol show job -o` as a dict (JobState, Reason, Restarts, ExitCode, ...); {} if unknown."""
        proc = self.cmd("scontrol", "show", "job", "-o", str(jid), check=False, timeout=15)
        info = {}
        for tok in proc.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                info.setdefault(k, v)
        return info

    def wait_for(self, jid: str, states: set[str], timeout: float, on_poll=None) -> dict:
        """Poll until the job's state is one of `states` (a final state not asked for is an error)."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED"}
        last = {}

        def poll():
            nonlocal last
            last = self.job(jid)
            if on_poll:
                on_poll(last)
            state = last.get("JobState")
            if state in states:
                return last
            if state in final:
                raise RuntimeError(f"job {jid} ended {state} (ExitCode {last.get('ExitCode')}, "
                                   f"Reason {last.get('Reason')}) while waiting for {sorted(states)}")
            return None
        try:
            return _wait(poll, timeout, f"job {jid} to reach {sorted(states)}", interval=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: JobState={last.get('JobState')} Reason={last.get('Reason')} "
                               f"Restarts={last.get('Restarts')}") from None

    # -- stop ----------------------------------------------------------------------------------
    def _our_pids(self) -> list[int]:
        """Processes whose environment names this cluster's slurm.conf (slurmstepd, jobs, daemons)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if mark in fh.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
        return found

    def stop(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        if "slurmctld" in self.pids and _alive(self.pids["slurmctld"]):
            try:
                self.cmd("scancel", "--full", "--partition", self.partition, check=False, timeout=10)
                _wait(lambda: not self.cmd("squeue", "-h", check=False, timeout=10).stdout.strip(),
                      min(15, max(1, deadline - time.monotonic())), "the queue to drain", interval=0.5)
            except Exception:   # noqa: BLE001 - stop anyway
                pass
            try:
                self.cmd("scontrol", "shutdown", check=False, timeout=10)
            except Exception:   # noqa: BLE001
                pass
        for name in ("slurmd", "slurmctld"):
            pid = self.pids.get(name)
            if pid:
                _stop_pid(pid, max(1.0, min(10, deadline - time.monotonic())), self.procs.get(name))
        for pid in self._our_pids():
            _stop_pid(pid, 3.0)
        pid = self.pids.get("munged")
        if pid:
            _stop_pid(pid, 5.0, self.procs.get("munged"))

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is not running
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_pid(pid: int, grace: float, popen: subprocess.Popen | None = None) -> None:
    """TERM, wait up to `grace` seconds, then KILL; reap when it is our child."""
    def gone():
        if popen is not None:
            return popen.poll() is not None
        return not _alive(pid)
    if gone():
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        _wait(gone, grace, f"pid {pid} to exit", interval=0.1)
    except TimeoutError:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if popen is not None:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__.split("Also a command line")[1], file=sys.stderr)
        return 2
    root = os.path.abspath(argv[1])
    if argv[0] == "up":
        ensure_installed()
        os.makedirs(root, exist_ok=True)
        cluster = MiniSlurm(root)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        # the daemons run in their own sessions and outlive this process
        print(f"export SLURM_CONF={cluster.conf}   # pids: {cluster.pids}; stop: "
              f"python {os.path.relpath(__file__)} down {root}")
        return 0
    cluster = MiniSlurm(root)
    with open(os.path.join(root, "pids.json")) as fh:
        cluster.pids = {k: int(v) for k, v in json.load(fh).items()}
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
