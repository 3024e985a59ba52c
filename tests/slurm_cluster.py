"""A real single-node SLURM cluster for the tests: munge, slurmctld and slurmd started with a generated
``slurm.conf`` in a temporary folder (this machine's short hostname and cores, one partition, free ports), and
stopped by their process ids. Nothing here mocks SLURM; without its binaries the tests fail, naming them
(``scripts/test`` installs Debian's ``slurm-wlm`` and ``munge``)."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(folder: Path) -> str:
    host = socket.gethostname().split(".")[0]
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    return "\n".join([
        "ClusterName=clsuite-test", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/backfill",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "MinJobAge=2", "KillWait=5",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO", ""])


def _start_munge() -> int | None:
    """Start munged unless one answers already; returns the pid of the one started here."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwnam("munge")
    os.chown(run, user.pw_uid, user.pw_gid)
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        subprocess.run(["mungekey", "--create", "--force"], check=True)
        os.chown(key, user.pw_uid, user.pw_gid)
    subprocess.run(["munged", "--force"], check=True, capture_output=True)
    return int(Path("/run/munge/munged.pid").read_text())


class Cluster:
    """Start with :meth:`up`; :attr:`env` is what a client needs (``SLURM_CONF``)."""

    def __init__(self, folder: Path):
        self.folder, self.pids = folder, []
        self.conf = folder / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def up(self, timeout: float = 60) -> "Cluster":
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise RuntimeError(f"SLURM is not installed here ({', '.join(missing)} missing); scripts/test installs "
                               f"Debian's slurm-wlm and munge")
        if os.geteuid() != 0:
            raise RuntimeError("the test cluster's daemons run as root; run scripts/test as root")
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_conf(self.folder))
        munged = _start_munge()
        if munged:
            self.pids.append(munged)
        end = time.time() + timeout
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(self.conf)], env=self.env, check=True, capture_output=True)
            pid_file = self.folder / f"{daemon}.pid"
            while not (pid_file.is_file() and pid_file.read_text().strip()):  # written once it has daemonized
                if time.time() > end:
                    raise RuntimeError(f"{daemon} did not start; see {self.folder}/{daemon}.log")
                time.sleep(0.1)
            self.pids.append(int(pid_file.read_text()))
        while time.time() < end:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster did not come up: sinfo says {out.stdout.strip() or out.stderr.strip()}")

    def down(self) -> None:
        """Cancel every job of this cluster (a failed test may leave one running), then stop its daemons."""
        if self.pids:
            subprocess.run(["scancel", "--full", "--signal=KILL", "--user", "root"], env=self.env, capture_output=True,
                           timeout=30)
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.pids.clear()
