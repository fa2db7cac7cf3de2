"""SLURM/PBS worker jobs without a batch system: settings, job scripts, clear errors.

The same code runs for real against a local SLURM in ``test_cluster_slurm.py``
(``make test-slurm``).
"""

from __future__ import annotations

import re
from pathlib import Path

import dask
import pytest

from cfhdask.cli import main
from cfhdask.cluster import dask_client, jobqueue_kwargs
from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import JobqueueSettings, resolve, settings

dask_jobqueue = pytest.importorskip("dask_jobqueue")


def _job(**values) -> JobqueueSettings:
    return resolve("cluster", {"jobqueue": {**settings().cluster.jobqueue.model_dump(),
                                            **values}}, style="yaml").jobqueue


def _script(kind: str = "slurm", **values) -> str:
    kwargs, _ = jobqueue_kwargs(_job(**values), kind)
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "host": "127.0.0.1"}
    with cls(**kwargs) as cluster:
        return cluster.job_script()


@pytest.mark.parametrize("cores, processes, threads", [(1, 1, 1), (8, 2, 4), (8, 8, 1)])
def test_threads_are_cores_over_processes(cores, processes, threads, tmp_path):
    script = _script(cores=cores, processes=processes, log_directory=str(tmp_path))
    assert f"--nthreads {threads}" in script and "--nthreads 0" not in script
    assert f"#SBATCH --cpus-per-task={cores}" in script
    assert ("--nworkers" in script) == (processes > 1)


@pytest.mark.parametrize("values, message", [
    ({"cores": 1}, "processes 2 exceeds cores 1"),
    ({"cores": 6, "processes": 4}, "cores 6 is not a multiple of processes 4"),
    ({"memory": "lots"}, "'lots' is not an amount of memory"),
    ({"walltime": "4h"}, "'4h' is not a walltime"),
    ({"walltime": "00:01:00", "lifetime": "70s"}, "reaches the walltime 00:01:00"),
    ({"lifetime": "10s", "lifetime_stagger": "20s"}, "leaves no time to work"),
])
def test_inconsistent_jobs_are_one_line_errors_naming_the_key(values, message):
    with pytest.raises(CfhdaskInputError, match=r"^config key 'cluster.jobqueue': .*"
                                                + re.escape(message)):
        _job(**values)
    env = {"cfhdask.cluster.jobqueue": {**settings().cluster.jobqueue.model_dump(), **values}}
    with dask.config.set(env), pytest.raises(CfhdaskInputError,
                                             match=r"^Dask config 'cfhdask.cluster.jobqueue'"):
        settings()


def test_lifetime_leaves_before_the_walltime():
    assert _job(walltime="04:00:00").worker_lifetime() == (13800.0, 300.0)  # 3h50 +- 5 min
    assert _job(walltime="00:01:00").worker_lifetime() == (48.0, 6.0)
    assert _job(walltime="1-00:00:00").worker_lifetime() == (85800.0, 300.0)
    assert _job(walltime="00:01:00", lifetime="35s", lifetime_stagger="15s") \
        .worker_lifetime() == (35.0, 15.0)
    assert _job(walltime=None).worker_lifetime() is None
    for wall, (life, stagger) in [("00:01:00", (48, 6)), ("04:00:00", (13800, 300))]:
        assert life + stagger < _seconds(wall)  # always gone before the job is killed


def _seconds(walltime: str) -> int:
    h, m, s = map(int, walltime.split(":"))
    return 3600 * h + 60 * m + s


def test_job_script_is_ready_for_a_typical_node(tmp_path):
    logs = tmp_path / "logs"
    script = _script(walltime="02:00:00", interface="lo", log_directory=str(logs),
                     prologue=["module load python"], extra_directives=["--constraint=avx2"],
                     queue="short", account="lab")
    for line in ("#SBATCH -J cfhdask-worker", "#SBATCH -p short", "#SBATCH -A lab",
                 "#SBATCH -t 02:00:00", "#SBATCH --constraint=avx2",
                 f"#SBATCH -e {logs}/cfhdask-worker-%J.err",
                 "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1",
                 "unset DASK_DISTRIBUTED__LOGGING",  # workers log to their job's .err file
                 "module load python"):
        assert line in script, line
    assert logs.is_dir()
    command = script.strip().splitlines()[-1]
    assert "--interface lo" in command
    assert "--local-directory ${TMPDIR:-/tmp}" in command  # node-local scratch, by the job's shell
    assert "--lifetime 6600s --lifetime-stagger 300s" in command
    assert script.index("module load python") < script.index(command)


def test_no_walltime_means_the_queue_default(tmp_path):
    script = _script(walltime=None, log_directory=str(tmp_path))
    assert "#SBATCH -t" not in script and "--lifetime" not in script
    pbs = _script("pbs", walltime=None, log_directory=str(tmp_path))
    assert "walltime=" not in pbs and "#PBS -l select=1:ncpus=8:mem=" in pbs


def test_pbs_script_is_consistent(tmp_path):
    pbs = _script("pbs", cores=4, processes=2, walltime="01:00:00", log_directory=str(tmp_path))
    assert "#PBS -N cfhdask-worker" in pbs and "#PBS -l walltime=01:00:00" in pbs
    command = pbs.strip().splitlines()[-1]
    assert "--nthreads 2 " in command and "--nworkers 2 " in command
    assert "--lifetime 3000s --lifetime-stagger 300s" in command


def test_batch_cluster_errors_before_anything_starts(monkeypatch, tmp_path):
    jq = {**settings().cluster.jobqueue.model_dump(), "log_directory": str(tmp_path)}
    with dask.config.set({"cfhdask.cluster.jobqueue": {**jq, "interface": "nope0"}}):
        with pytest.raises(CfhdaskInputError, match="no network interface 'nope0' on this host"):
            with dask_client(cluster="slurm"):
                pass
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no qsub
    for kind, command in (("slurm", "sbatch"), ("pbs", "qsub")):
        with pytest.raises(CfhdaskInputError, match=f"--cluster {kind}: {command} not found"):
            with dask_client(cluster=kind):
                pass


def test_cli_cluster_options(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["cfh", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--wait-workers N", "--tls-ca-file PEM", "--tls-cert PEM", "--tls-key PEM",
                 "--cluster {local,slurm,pbs,kubernetes}"):
        assert flag in out, flag
    assert "replaced before their walltime" in out
    # bad combinations are named by their flags before anything runs
    assert main(["cfh", str(tmp_path), "--tls-key", "k.pem"]) == 2
    assert "--tls-key" in capsys.readouterr().err
    assert main(["cfh", str(tmp_path), "--wait-workers", "-1"]) == 2
    assert "--wait-workers" in capsys.readouterr().err


def test_shipped_slurm_settings_are_valid():
    import yaml

    from cfhdask.settings import Settings

    path = Path(__file__).resolve().parents[2] / "deploy" / "slurm" / "cfhdask.yaml"
    with dask.config.set(yaml.safe_load(path.read_text())):
        jq = settings().cluster.jobqueue
    assert isinstance(settings(), Settings)
    assert (jq.cores, jq.processes, jq.threads, jq.jobs) == (16, 4, 4, 8)
    assert jq.prologue and jq.interface == "ib0"


def test_replacement_jobs_never_reuse_a_name():
    """A freed name is not handed out again: distributed closes the job that has the name
    of a worker gone for ``lost-worker-timeout``, which would be the replacement."""
    from cfhdask.cluster.batch import _cluster_class

    kwargs, _ = jobqueue_kwargs(_job(cores=1, processes=1))
    kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "host": "127.0.0.1"}
    with _cluster_class(dask_jobqueue.SLURMCluster)(**kwargs) as cluster:
        assert type(cluster).__name__ == "SLURMCluster"
        names = []
        for _ in range(3):
            spec = cluster.new_worker_spec()
            cluster.worker_spec.update(spec)
            names += list(spec)
            del cluster.worker_spec[names[-1]]  # the job ended and was scaled down
        assert len(set(names)) == 3, names
        assert cluster.job_script()  # still a working SLURMCluster
