#!/usr/bin/env python3
"""A throwaway single-node SLURM on this machine, to try and test cfhdask's SLURM path.

Debian's ``slurm-wlm`` and ``munge`` (installed with ``apt-get`` when missing),
run as root with ``proctrack/linuxproc``, ``task/none`` and ``select/cons_tres``.
Everything it writes (configuration, munge key and socket, state, spool, logs
and pid files) lives in one folder; ports are picked free, so it neither
touches ``/etc/slurm`` nor collides with another SLURM on the machine.  Its
commands need ``SLURM_CONF`` pointing at the folder's ``slurm.conf``::

    python deploy/slurm/local_slurm.py start --dir slurm-local   # prints the export line
    export SLURM_CONF=$PWD/slurm-local/slurm.conf
    sinfo; srun hostname
    python deploy/slurm/local_slurm.py stop --dir slurm-local

``stop`` cancels the jobs of this SLURM, then stops the daemons by the PIDs in
their pid files (checking each PID is still that daemon), never by name.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

__all__ = ["conf_path", "main", "start", "stop"]

#: Daemons in the order they start (stopped in reverse); name -> executable.
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld",
           "slurmd": "/usr/sbin/slurmd"}
PACKAGES = ("slurm-wlm", "munge")

CONF = """\
# Single-node SLURM written by deploy/slurm/local_slurm.py
ClusterName=cfhdask-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MessageTimeout=20
KillWait=5
MinJobAge=30
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def conf_path(folder: str) -> str:
    """The ``slurm.conf`` of a local SLURM folder (the value of ``SLURM_CONF``)."""
    return os.path.join(os.path.abspath(folder), "slurm.conf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    """Most of this machine's memory, in MB (slurmd drains a node that claims more)."""
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    return max(1024, int(total_kb / 1024 * 0.8))


def _install() -> None:
    missing = [exe for exe in DAEMONS.values() if not os.path.exists(exe)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"local_slurm: {', '.join(missing)} missing; install {' '.join(PACKAGES)}")
    print("local_slurm: installing " + " ".join(PACKAGES), flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _pid(folder: str, daemon: str) -> int | None:
    """PID in the daemon's pid file, if that process still runs that daemon."""
    try:
        with open(os.path.join(folder, f"{daemon}.pid")) as f:
            pid = int(f.read().split()[0])
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.basename(exe).startswith(daemon) else None


def _slurm(folder: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_CONF": conf_path(folder)}
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, check=check)


def start(folder: str, cpus: int | None = None, memory_mb: int | None = None,
          timeout: float = 60.0) -> str:
    """Start munged, slurmctld and slurmd with their files in ``folder``.

    Returns
    -------
    str
        The path of ``slurm.conf`` (export it as ``SLURM_CONF``).
    """
    if os.geteuid() != 0:
        sys.exit("local_slurm: run as root (the daemons run as root here)")
    _install()
    folder = os.path.abspath(folder)
    if any(_pid(folder, d) for d in DAEMONS):
        sys.exit(f"local_slurm: a SLURM already runs from {folder}; stop it first")
    munge_dir = os.path.join(folder, "munge")
    for sub in ("state", "spool", "munge"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    os.chmod(folder, 0o755)
    os.chmod(munge_dir, 0o700)
    key = os.path.join(munge_dir, "munge.key")
    if not os.path.exists(key):
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
    conf = conf_path(folder)
    with open(conf, "w") as f:
        f.write(CONF.format(dir=folder, cpus=cpus or os.cpu_count() or 1,
                            memory=memory_mb or _memory_mb(), ctld_port=_free_port(),
                            slurmd_port=_free_port()))
    subprocess.run([DAEMONS["munged"], "--force", f"--socket={munge_dir}/munge.socket",
                    f"--key-file={key}", f"--pid-file={folder}/munged.pid",
                    f"--log-file={munge_dir}/munged.log", f"--seed-file={munge_dir}/seed"],
                   check=True)
    subprocess.run([DAEMONS["slurmctld"], "-f", conf], check=True)
    subprocess.run([DAEMONS["slurmd"], "-f", conf, "-N", "localhost"], check=True)
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = _slurm(folder, "sinfo", "-h", "-o", "%T").stdout.strip()
        if state in ("idle", "mixed", "allocated"):
            return conf
        time.sleep(0.5)
    stop(folder)
    sys.exit(f"local_slurm: the node did not come up in {timeout:.0f} s (sinfo: {state!r}); "
             f"see {folder}/slurmctld.log and {folder}/slurmd.log")


def stop(folder: str, timeout: float = 30.0) -> None:
    """Cancel this SLURM's jobs, then stop its daemons by the PIDs in their pid files."""
    folder = os.path.abspath(folder)
    if _pid(folder, "slurmctld"):
        _slurm(folder, "scancel", "--full", "--user", "root")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _slurm(folder, "squeue", "-h", "-o", "%i")
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(0.5)
    for daemon in reversed(DAEMONS):
        pid = _pid(folder, daemon)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid(folder, daemon) == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid(folder, daemon) == pid:
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """``local_slurm.py start|stop|status --dir DIR``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--dir", default="/tmp/cfhdask-slurm",
                   help="folder of the configuration, state, logs and pid files")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the node (default: all)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="memory of the node in MB (default: 80%% of this machine's)")
    args = p.parse_args(argv)
    if args.action == "start":
        conf = start(args.dir, args.cpus, args.memory_mb)
        print(f"export SLURM_CONF={conf}")
    elif args.action == "stop":
        stop(args.dir)
    else:
        running = {d: _pid(os.path.abspath(args.dir), d) for d in DAEMONS}
        print(" ".join(f"{d}={pid or '-'}" for d, pid in running.items()))
        return 0 if all(running.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
