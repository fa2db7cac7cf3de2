"""cfhdask on a real SLURM: ``--cluster slurm`` (dask-jobqueue) and the shipped sbatch recipe.

Run by ``make test-slurm``, which starts a single-node SLURM on localhost
(``deploy/slurm/local_slurm.py``) and selects these tests with ``-m slurm``;
plain ``make test`` deselects them, and they skip when no SLURM answers.  The
node has this machine's 2 CPUs: worker jobs take 1 core each, so two run at
once and a third pends on Resources.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from clusterhelpers import (
    assert_same_cfh,
    assert_same_stats,
    cli_env,
    run_cli,
    start_cli,
    study_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "deploy" / "slurm" / "cfhdask-slurm.sbatch"


def _squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r %j"], capture_output=True,
                         text=True, timeout=60, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _wait_queue_empty(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _squeue() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _squeue() == [], "jobs left in the queue"


@pytest.fixture(scope="module")
def slurm():
    """The running SLURM (``SLURM_CONF``); skips when none answers."""
    if not shutil.which("sinfo") or not os.environ.get("SLURM_CONF"):
        pytest.skip("no SLURM running (make test-slurm starts one)")
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0 or out.stdout.strip() not in ("idle", "mixed", "allocated"):
        pytest.skip(f"SLURM does not answer: {out.stderr.strip() or out.stdout.strip()}")
    _wait_queue_empty()
    yield
    _wait_queue_empty()


def _jobqueue(logs: Path, **values) -> dict:
    """``cfhdask.cluster.jobqueue`` for worker jobs that fit this 2-CPU node."""
    return {"cores": 1, "processes": 1, "memory": "2GiB", "jobs": 2, "walltime": "00:10:00",
            "interface": "lo", "log_directory": str(logs), **values}


def jobqueue_env(logs: Path, **values) -> dict[str, str]:
    """``DASK_CFHDASK__CLUSTER__...`` variables for :func:`_jobqueue`'s jobs."""
    jq = _jobqueue(logs, **values)
    env = {f"DASK_CFHDASK__CLUSTER__JOBQUEUE__{k.upper()}": repr(v) if isinstance(v, list)
           else str(v) for k, v in jq.items()}
    env["DASK_CFHDASK__CLUSTER__WAIT_TIMEOUT"] = "90s"
    return env


def _stats(reference, out: Path, n_perm: int = 40) -> list:
    """``cfhdask stats`` arguments on the reference store (nothing is written into it)."""
    return ["stats", reference.store, "--participants", reference.participants, "--group",
            "group", "--covariates", "age,sex", "--n-perm", str(n_perm), "--seed", "1",
            "--out", out]


def _job_logs(logs: Path) -> list[str]:
    return sorted(glob.glob(str(logs / "cfhdask-worker-*.err")))


def _one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The CLI's error: exit 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "tornado" not in proc.stderr.lower(), proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"cfhdask {command}: error")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ----------------------------------------------------------------------------- pipelines
def test_ingest_cfh_stats_through_slurm(slurm, tiny_cohort, reference, tmp_path):
    logs = tmp_path / "logs"
    env = jobqueue_env(logs)
    store, out = tmp_path / "cohort.zarr", tmp_path / "stats"
    steps = [
        ("ingest", ["--bids-derivatives", tiny_cohort, "--out", store, "--drop-volumes", "4"]),
        ("cfh", [store, "--no-progress"]),
        ("stats", [store, "--participants", tiny_cohort / "participants.tsv", "--group",
                   "group", "--covariates", "age,sex", "--n-perm", "40", "--seed", "1",
                   "--out", out]),
    ]
    for command, args in steps:
        proc = run_cli(command, *args, "--cluster", "slurm", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "SLURM cluster ready" in proc.stderr and "Traceback" not in proc.stderr
    assert len(_job_logs(logs)) == 3 * 2  # each command its own cluster of 2 jobs
    assert_same_cfh(store, reference.store)
    assert_same_stats(out, reference.stats_dir)


def test_run_keeps_one_cluster_for_every_stage(slurm, tiny_cohort, reference, tmp_path):
    logs = tmp_path / "logs"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(tiny_cohort, tmp_path / "out")))
    proc = run_cli("run", config, "--cluster", "slurm", env=jobqueue_env(logs))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("SLURM cluster ready") == 1
    assert len(_job_logs(logs)) == 2  # jobs submitted once, for ingest, cfh and stats
    store = glob.glob(str(tmp_path / "out" / "cohort-*.zarr"))[0]
    stats_dir = glob.glob(str(tmp_path / "out" / "stats-*"))[0]
    assert_same_cfh(store, reference.store)
    assert_same_stats(stats_dir, reference.stats_dir)
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000


def test_defaults_bind_the_scheduler_where_the_nodes_reach_it(slurm, tmp_path):
    """No interface given: the scheduler listens on the address towards the node (lo here)."""
    import dask

    from cfhdask.cluster import dask_client

    jq = {**{k: v for k, v in _jobqueue(tmp_path / "logs").items() if k != "interface"},
          "jobs": 1}
    with dask.config.set({"cfhdask.cluster.jobqueue": jq,
                          "cfhdask.cluster.wait_timeout": "90s"}):
        with dask_client(cluster="slurm") as client:
            assert client.scheduler.address.startswith("tcp://127.0.0.1:")
            assert client.submit(sum, [1, 2]).result() == 3
            info = client.scheduler_info(n_workers=-1)["workers"]
            assert [w["nthreads"] for w in info.values()] == [1]  # cores 1 -> 1 thread
            assert len(_squeue()) == 1
    _wait_queue_empty()


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("values, reason", [
    ({"cores": 8, "processes": 1}, "SLURM refuses the worker job (8 cores, 2GiB, walltime "
                                   "00:10:00, queue default): allocation failure: Requested "
                                   "node configuration is not available"),
    ({"memory": "900GiB"}, "SLURM refuses the worker job (1 cores, 900GiB"),
    ({"extra_directives": ["--hold"]}, "cannot start: it pends on JobHeldUser, which does not "
                                       "clear by itself"),
    ({"extra_directives": ["--begin=now+1hour"]}, "no Dask worker joined in 20 s "
                                                  "(cfhdask.cluster.wait_timeout); worker "
                                                  "jobs: "),
    ({"prologue": ["echo 'python3: module cfhdask not found' >&2", "exit 3"]},
     "before its Dask worker joined; "),
])
def test_jobs_that_cannot_run_are_one_line_errors(slurm, reference, tmp_path, values, reason):
    logs = tmp_path / "logs"
    env = {**jobqueue_env(logs, **values), "DASK_CFHDASK__CLUSTER__WAIT_TIMEOUT": "20s"}
    t0 = time.monotonic()
    proc = run_cli(*_stats(reference, tmp_path / "stats"), "--cluster", "slurm", env=env)
    line = _one_line_error(proc, "stats")
    assert reason in line, line
    if "--begin" in str(values):
        assert line.count("PENDING (BeginTime)") == 2
    if "prologue" in values:
        assert re.search(r"worker job \d+ ended( \(\w+\))? before its Dask worker joined",
                         line), line
        assert "cfhdask-worker-" in line and "python3: module cfhdask not found" in line
    assert time.monotonic() - t0 < 120  # no silent wait
    assert not (tmp_path / "stats").exists()  # nothing computed, nothing written
    _wait_queue_empty()  # pending jobs were cancelled


@pytest.fixture(scope="module")
def long_store(tmp_path_factory, local_client):
    """32 subjects on the 4 mm grid (CFH: about a minute on 2 workers), and its reference.

    ``(store, reference)``: the store ingested only, and a copy with its CFH
    computed on the 2-worker LocalCluster.
    """
    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.prep.ingest import ingest
    from cfhdask.sim.cohort import simulate_cohort

    folder = tmp_path_factory.mktemp("long")
    simulate_cohort(str(folder / "bids"), n_patients=16, n_controls=16, n_volumes=120,
                    grid="4mm", layout="bids", seed=5)
    bolds = sorted(glob.glob(str(folder / "bids" / "sub-*" / "func" / "*_bold.nii.gz")))
    ingest(bolds, str(folder / "store.zarr"), client=local_client)
    shutil.rmtree(folder / "bids")
    shutil.copytree(folder / "store.zarr", folder / "ref.zarr")
    compute_cfh(str(folder / "ref.zarr"), client=local_client, show_progress=False)
    return folder / "store.zarr", folder / "ref.zarr"


def _long_cfh(long_store, tmp_path: Path, n_subjects: int = 16, *options: str) -> list:
    """``cfhdask cfh OPTIONS`` on a copy of ``n_subjects`` of the long store."""
    src = Path(long_store[0])
    keep = sorted(n for n in os.listdir(src / "subjects") if n.startswith("sub-"))[:n_subjects]

    def ignore(folder, names):  # other subjects only: the group's zarr.json stays
        return [n for n in names if Path(folder) == src / "subjects" and n.startswith("sub-")
                and n not in keep]

    store = tmp_path / "store.zarr"
    shutil.copytree(src, store, ignore=ignore)
    return ["cfh", store, "--no-progress", *options]


#: A run that the test stops long before it could end, however fast the machine: every
#: subject's own counterpart (a left x right GEMM each, minutes on 2 workers), recomputed.
STOPPED_RUN = ("--counterpart", "subject")


def _wait_for(condition, what: str, proc: subprocess.Popen | None = None,
              timeout: float = 300):
    """Poll ``condition()`` until it returns something true; fail after ``timeout`` s.

    The CLI ``proc`` must keep running meanwhile (its stderr is shown if it ended).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"cfhdask ended (rc {proc.returncode}) before {what}:\n"
                                 f"{proc.communicate()[1]}")
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"no {what} in {timeout:.0f} s; queue: {_squeue()}")


def _registered(logs: Path, n: int) -> list[str] | None:
    """Ids of the jobs whose Dask worker has joined the scheduler (their logs), if ``n``."""
    joined = [re.search(r"cfhdask-worker-(\d+)\.err$", p).group(1) for p in _job_logs(logs)
              if "Registered to:" in Path(p).read_text(errors="replace")]
    return joined if len(joined) >= n else None


def _job_states(ids) -> dict[str, str]:
    """States of jobs, ended ones included (SLURM keeps them ``MinJobAge`` seconds)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T"],
                         capture_output=True, text=True, timeout=60)
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def _stderr_of(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for the CLI to exit (killed after ``timeout`` s); its stderr."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"cfhdask did not stop in {timeout} s: "
                             f"{proc.communicate()[1]}") from None


def test_refused_replacement_stops_the_run_cleanly(slurm, long_store, tmp_path):
    """The queue stops taking jobs mid-run: a worker job ends, its replacement is refused."""
    logs = tmp_path / "logs"
    proc = start_cli(*_long_cfh(long_store, tmp_path, 32, *STOPPED_RUN), "--cluster", "slurm",
                     env=jobqueue_env(logs))
    try:
        joined = _wait_for(lambda: _registered(logs, 2), "2 Dask workers joined", proc)
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DRAIN"], check=True)
        subprocess.run(["scancel", joined[0]], check=True)
        err = _stderr_of(proc)
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)
        if proc.poll() is None:
            proc.kill()
    line = _one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", err),
                           "cfh")
    assert "sbatch refused a worker job: sbatch: error: Batch job submission failed: Required " \
           "partition not available (inactive or drain)" in line, line
    assert "submitting 1 replacement(s)" in err  # the ended job was seen and replaced
    _wait_queue_empty(timeout=120)  # the other worker's job was cancelled


def test_sigterm_cancels_pending_and_running_jobs(slurm, long_store, tmp_path):
    logs = tmp_path / "logs"
    env = jobqueue_env(logs, jobs=3)  # 2 run, 1 pends on Resources
    proc = start_cli(*_long_cfh(long_store, tmp_path, 32, *STOPPED_RUN), "--cluster", "slurm",
                     env=env)
    try:
        _wait_for(lambda: _registered(logs, 2), "2 Dask workers joined", proc)  # computing

        def two_running_one_pending():
            jobs = dict(ln.split()[:2] for ln in _squeue())
            states = sorted(jobs.values())
            return jobs if states == ["PENDING", "RUNNING", "RUNNING"] else None

        jobs = _wait_for(two_running_one_pending, "2 running jobs and 1 pending", proc)
        proc.send_signal(signal.SIGTERM)
        err = _stderr_of(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM: closing the cluster (worker jobs cancelled)" in err
    assert "Traceback" not in err
    # cancelled by the client before it exited, the pending job included: none ran on
    ended = _job_states(jobs)
    assert all(ended.get(j) in ("CANCELLED", "COMPLETING") for j in jobs), ended
    pending = next(j for j, state in jobs.items() if state == "PENDING")
    assert ended[pending] == "CANCELLED", ended
    _wait_queue_empty(timeout=120)


# ----------------------------------------------------------------------------- walltime
#: The walltime test's work: every subject's own counterpart (``--counterpart subject``, a
#: left x right GEMM each) of the 32 subjects, several times the longest worker lifetime
#: however fast the machine, in units of a few seconds that are written as they end.
#: (Group mode's maps pass is too short to outlast the lifetimes, and its group sum keeps
#: partial sums in memory; tests/cluster/test_cluster_restrictions.py covers the group sum
#: when every worker leaves.)
WALLTIME_RUN = ("--counterpart", "subject")


@pytest.fixture(scope="module")
def subject_reference(long_store, tmp_path_factory, local_client):
    """The long store with every subject's ``--counterpart subject`` CFH on the LocalCluster."""
    from cfhdask.cfh.compute import compute_cfh

    ref = tmp_path_factory.mktemp("subject-ref") / "ref.zarr"
    shutil.copytree(long_store[0], ref)
    compute_cfh(str(ref), counterpart="subject", client=local_client, show_progress=False)
    return ref


def test_jobs_reaching_their_walltime_are_replaced_and_nothing_is_lost(
        slurm, long_store, subject_reference, tmp_path):
    """Worker jobs of 1 minute, workers leaving after 5-15 s: the cohort still completes.

    Every job that ends is replaced while the per-subject CFH of 32 subjects
    runs (units of two or three subjects, one task each, about a second a
    unit: some 20 s on this machine's 2 cores, so several lifetimes); the maps
    are those of the LocalCluster, bit for bit.
    """
    store = tmp_path / "store.zarr"
    shutil.copytree(long_store[0], store)
    logs = tmp_path / "logs"
    env = jobqueue_env(logs, walltime="00:01:00", lifetime="10s", lifetime_stagger="5s")
    proc = run_cli("cfh", store, "--no-progress", *WALLTIME_RUN, "--cluster", "slurm",
                   env=env, timeout=840)
    assert proc.returncode == 0, proc.stderr
    assert "worker job(s) ended (lifetime or walltime); submitting" in proc.stderr
    assert len(_job_logs(logs)) > 2  # jobs were replaced
    assert "Traceback" not in proc.stderr
    assert "subjects computed: 32" in proc.stdout
    assert_same_cfh(store, subject_reference, "cfh_subject")  # as on the LocalCluster
    _wait_queue_empty()


# ----------------------------------------------------------------------------- sbatch recipe
def test_shipped_sbatch_recipe_runs_the_study(slurm, tiny_cohort, reference, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_config(tiny_cohort, tmp_path / "out")))
    env = cli_env({"CFHDASK_INTERFACE": "lo"})
    # 2 tasks of 1 CPU on this node, instead of the recipe's 4 nodes x 2 tasks x 8 CPUs
    proc = subprocess.run(["sbatch", "--wait", "--nodes=1", "--ntasks=2",
                           "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=6G",
                           "--time=10", f"--output={tmp_path}/slurm-%j.log", str(SBATCH),
                           str(config)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    log_text = "\n".join(Path(p).read_text() for p in glob.glob(str(tmp_path / "slurm-*.log")))
    assert proc.returncode == 0, proc.stderr + log_text
    assert "step creation temporarily disabled" not in log_text
    assert "Waiting for 2 Dask worker(s)" in log_text
    assert "Attached to Dask scheduler tcp://127.0.0.1:" in log_text
    store = glob.glob(str(tmp_path / "out" / "cohort-*.zarr"))[0]
    assert_same_cfh(store, reference.store)
    assert_same_stats(glob.glob(str(tmp_path / "out" / "stats-*"))[0], reference.stats_dir)
    assert (tmp_path / "out" / "report.html").exists()
    assert not glob.glob(str(tmp_path / "scheduler-*.json"))  # cleaned up
