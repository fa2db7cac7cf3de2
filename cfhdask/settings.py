"""Every default of cfhdask, in one typed settings model.

:class:`Settings` has one section per part of the analysis (``cluster``,
``store``, ``inputs``, ``mask``, ``preprocessing``, ``cfh``, ``autonomy``,
``design``, ``stats``, ``null_check``, ``clinical``, ``report``, ``simulate``).  The
command line, the shipped ``cfhdask.yaml``, ``study.yaml`` and the Python API all take
their defaults from here.  Values are layered, later ones winning:

1. the field defaults below (the only place a default is written);
2. ``cfhdask/cfhdask.yaml`` shipped with the package (generated from 1 by
   :func:`defaults_yaml`; a test keeps the two identical);
3. the user's Dask configuration, as for dask-jobqueue:
   ``~/.config/dask/cfhdask.yaml``, a file named by ``$DASK_CONFIG``, or
   ``DASK_CFHDASK__SECTION__KEY`` environment variables (``-`` and ``_`` are
   the same in keys);
4. ``study.yaml`` (:mod:`cfhdask.study.config`);
5. options given on the command line or as API arguments.

:func:`settings` returns the validated result of 1–3; :func:`resolve` applies
5 on top of one section.  Every bad value is a one-line
:class:`~cfhdask.errors.CfhdaskInputError` naming the key or option.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import dask
import dask.config
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import parse_combine

__all__ = [
    "AutonomySettings", "CFHSettings", "ClinicalSettings", "ClusterSettings",
    "DesignSettings", "InputsSettings", "JobqueueSettings", "KubernetesSettings",
    "MaskSettings", "NullCheckSettings", "PreprocessingSettings", "ReportSettings",
    "Settings", "SimulateSettings", "StatsSettings", "StoreSettings", "default_metric",
    "defaults_yaml", "duration_seconds", "error_message", "resolve", "settings",
    "walltime_seconds",
]

#: The shipped defaults file (Dask config format, ``cfhdask:`` namespace).
YAML_PATH = os.path.join(os.path.dirname(__file__), "cfhdask.yaml")

#: Denoising steps ``preprocessing.order`` may name.
STEPS = ("smooth", "regress", "filter", "clean")
#: Band-pass filters: nilearn's Butterworth, DPABI's ideal (FFT) filter.
FILTERS = ("butterworth", "ideal")


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are not coerced
    (``"5"`` or ``true`` for a number is an error), assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


# ----------------------------------------------------------------------------- cluster
def walltime_seconds(text: str) -> int:
    """Seconds of a batch walltime: ``[D-]HH:MM:SS``, ``MM:SS`` or minutes (``"90"``).

    Raises
    ------
    ValueError
        Not a walltime.
    """
    days, _, rest = str(text).strip().rpartition("-")
    parts = rest.split(":")
    try:
        if not days and len(parts) == 1:
            return int(parts[0]) * 60  # SLURM: a bare number is minutes
        if len(parts) > 3:
            raise ValueError
        seconds = 0
        for p in parts:
            seconds = seconds * 60 + int(p)
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a walltime ([D-]HH:MM:SS, MM:SS or minutes)") from None


def duration_seconds(text: str) -> float:
    """Seconds of a Dask duration (``"90s"``, ``"30m"``, ``"2h"``, ``"45"``)."""
    from dask.utils import parse_timedelta

    try:
        return float(parse_timedelta(text, default="seconds"))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 2h)") from None


def _check(parse, value, what: str) -> None:
    if value is not None:
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None


def _bytes(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise ValueError(f"{text!r} is not an amount of memory (e.g. 4GiB)") from None


class JobqueueSettings(Section):
    """dask-jobqueue worker jobs (``--cluster slurm|pbs``)."""

    cores: int = Field(8, ge=1, description="Cores per job.")
    memory: str = Field("32GiB", description="Memory per job.")
    processes: int = Field(2, ge=1, description="Dask worker processes per job; each gets "
                                                "cores / processes threads (a whole number, "
                                                "at least 1).")
    walltime: str | None = Field("04:00:00", description="Walltime of a worker job "
                                 "([D-]HH:MM:SS; null: the queue's default).")
    queue: str | None = Field(None, description="Queue / partition (null: the site default).")
    account: str | None = Field(None, description="Account / project to charge.")
    jobs: int = Field(4, ge=1, description="Worker jobs kept running (a job that ends is "
                                           "replaced).")
    interface: str | None = Field(None, description="Network interface of the scheduler and "
                                  "the workers, e.g. ib0 or eth0 (null: the scheduler listens "
                                  "on this host's address towards the compute nodes, from "
                                  "sinfo: 127.0.0.1 when they are this machine).")
    local_directory: str | None = Field("${TMPDIR:-/tmp}", description="Node-local scratch "
                                        "folder where workers spill (expanded by the job's "
                                        "shell; null: the working directory).")
    log_directory: str | None = Field("cfhdask-logs", description="Folder of the jobs' "
                                      "stdout/stderr files (null: the batch system's "
                                      "default).")
    lifetime: str | None = Field(None, description="Each worker leaves gracefully after this "
                                 "long and its job is replaced, so no work is lost at the "
                                 "walltime (null: walltime minus two staggers).")
    lifetime_stagger: str | None = Field(None, description="Random spread of the lifetimes, "
                                         "so workers do not all leave at once (null: a tenth "
                                         "of the walltime, at most 5 minutes).")
    prologue: list[str] = Field([], description="Shell lines run in each job before its "
                                                "worker (module load, source venv...).")
    extra_directives: list[str] = Field([], description="Extra #SBATCH / #PBS directive "
                                                        "options, e.g. --constraint=avx2.")

    @model_validator(mode="after")
    def _consistent(self) -> JobqueueSettings:
        if self.processes > self.cores:
            raise ValueError(f"processes {self.processes} exceeds cores {self.cores}: each "
                             "worker process needs at least one core (threads = cores / "
                             "processes)")
        if self.cores % self.processes:
            raise ValueError(f"cores {self.cores} is not a multiple of processes "
                             f"{self.processes}: threads = cores / processes must be whole")
        _check(_bytes, self.memory, "memory")
        _check(walltime_seconds, self.walltime, "walltime")
        _check(duration_seconds, self.lifetime, "lifetime")
        _check(duration_seconds, self.lifetime_stagger, "lifetime_stagger")
        lifetime = self.worker_lifetime()
        if lifetime is not None:
            life, stagger = lifetime
            wall = walltime_seconds(self.walltime) if self.walltime else None
            if life - stagger <= 0:
                raise ValueError(f"lifetime {life:.0f} s minus its stagger {stagger:.0f} s "
                                 "leaves no time to work")
            if wall is not None and life + stagger >= wall:
                raise ValueError(f"lifetime {life:.0f} s + stagger {stagger:.0f} s reaches "
                                 f"the walltime {self.walltime}: workers would be killed "
                                 "before they leave")
        return self

    def worker_lifetime(self) -> tuple[float, float] | None:
        """``(lifetime, stagger)`` of each worker in seconds; None without walltime/lifetime.

        By default the stagger is a tenth of the walltime (at most 5 minutes) and
        the lifetime the walltime minus two staggers: every worker leaves
        gracefully at least one stagger before its job is killed.
        """
        wall = walltime_seconds(self.walltime) if self.walltime else None
        if self.lifetime_stagger is not None:
            stagger = duration_seconds(self.lifetime_stagger)
        else:
            stagger = min(300.0, wall / 10) if wall else 0.0
        if self.lifetime is not None:
            return duration_seconds(self.lifetime), stagger
        return (wall - 2 * stagger, stagger) if wall else None

    @property
    def threads(self) -> int:
        """Threads of each worker process."""
        return self.cores // self.processes


def _default_image() -> str:
    from cfhdask._version import __version__

    return "cfhdask:" + __version__.replace("+", "-")


class KubernetesSettings(Section):
    """dask-kubernetes workers (``--cluster kubernetes``)."""

    image: str = Field(default_factory=_default_image, description="Worker image: built from "
                       "deploy/docker/Dockerfile and pushed where the cluster pulls from "
                       "(see deploy/README.md).")
    n_workers: int = Field(4, ge=1, description="Worker pods.")
    threads: int = Field(4, ge=1, description="Threads (and CPUs) of each worker pod.")
    memory: str = Field("16GiB", description="Memory of each worker pod (its limit and the "
                                             "Dask worker's).")

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSettings:
        _check(_bytes, self.memory, "memory")
        return self


class ClusterSettings(Section):
    """Where the Dask work runs."""

    kind: Literal["local", "slurm", "pbs", "kubernetes"] = Field(
        "local", description="Cluster started when no scheduler is given: an embedded "
                             "LocalCluster, dask-jobqueue SLURM/PBS jobs or Kubernetes pods.")
    scheduler: str | None = Field(None, description="Address of a running Dask scheduler to "
                                                    "attach to, e.g. tcp://head:8786 or "
                                                    "tls://head:8786.")
    scheduler_file: str | None = Field(None, description="Scheduler file of a running Dask "
                                                         "cluster.")
    n_workers: int | None = Field(None, ge=1, description="Workers of the embedded "
                                                          "LocalCluster (null: one per core).")
    threads_per_worker: int | None = Field(None, ge=1, description="Threads per embedded "
                                                                   "worker (null: 1).")
    memory_limit: str = Field("auto", description="Memory limit per embedded worker "
                                                  "(as distributed.LocalCluster).")
    processes: bool = Field(True, description="Embedded workers are processes (else threads).")
    dashboard_address: str | None = Field("127.0.0.1:0", description="Dashboard of a "
                                          "cluster cfhdask starts (':0' picks a free port; "
                                          "null: no dashboard).")
    blas_threads: int | None = Field(None, ge=1, description="BLAS threads per Dask thread "
                                     "(null: cores // (workers x threads), at least 1).")
    malloc_trim_threshold: int | None = Field(
        None, ge=0, description="glibc MALLOC_TRIM_THRESHOLD_ of the worker processes of every "
        "cluster cfhdask starts (embedded, SLURM/PBS, Kubernetes). null: not set by cfhdask "
        "(glibc's dynamic default unless the environment sets it), which reuses freed memory "
        "for the kernels' large temporaries; Dask's own default, 65536, returns freed memory "
        "to the OS sooner but page-faults every large allocation: 1.7x the CPU time of the "
        "denoising kernel (benchmarks/bench_worker_env.py).")
    wait_workers: int | None = Field(None, ge=0, description="Workers to wait for before "
                                     "computing (null: 1 for SLURM/PBS/Kubernetes clusters, "
                                     "0 for an attached one).")
    wait_timeout: str = Field("30m", description="How long to wait for those workers (and "
                              "for any worker at all, later) before stopping with an error "
                              "that says why.")
    tls_ca_file: str | None = Field(None, description="CA certificate (PEM) that signed the "
                                    "scheduler's certificate, for a tls:// scheduler.")
    tls_cert: str | None = Field(None, description="This client's TLS certificate (PEM), for "
                                 "a tls:// scheduler.")
    tls_key: str | None = Field(None, description="Private key of --tls-cert (null: inside "
                                "the certificate file).")
    jobqueue: JobqueueSettings = Field(default_factory=JobqueueSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def _one_scheduler(self) -> ClusterSettings:
        if self.scheduler and self.scheduler_file:
            raise ValueError("give a scheduler (--scheduler) or a scheduler file "
                             "(--scheduler-file), not both")
        _check(duration_seconds, self.wait_timeout, "wait_timeout")
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key (--tls-key) needs its certificate (--tls-cert)")
        if bool(self.tls_cert) != bool(self.tls_ca_file):
            raise ValueError("a TLS connection needs both the CA certificate (--tls-ca-file), to "
                             "check the scheduler, and this client's certificate (--tls-cert), "
                             "which the scheduler checks")
        return self


# ----------------------------------------------------------------------------- data
class StoreSettings(Section):
    """Layout of new cohort stores."""

    voxel_chunk: int = Field(4096, ge=1, description="Voxels per Zarr chunk of the "
                                                     "per-subject arrays.")
    compressor_level: int = Field(3, ge=0, le=9, description="zstd level of the Blosc "
                                                              "compressor.")


class InputsSettings(Section):
    """How inputs are found."""

    space: str = Field("MNI152NLin2009cAsym", description="fMRIPrep output space to use.")
    task: str = Field("rest", description="BIDS task label of the runs to use.")
    dpabi_dir: str = Field("FunImgARCW", description="DPABI image folder (prefix) to read.")


class MaskSettings(Section):
    """The analysis mask."""

    source: str = Field("gm", description="'gm' (nilearn's MNI152 grey-matter probability "
                                          "map, resampled to the data) or a mask NIfTI on "
                                          "the data grid.")
    gm_threshold: float = Field(0.2, ge=0.0, lt=1.0, description="Grey-matter probability "
                                                                 "threshold (paper: 0.2).")


class PreprocessingSettings(Section):
    """Denoising while ingesting (the paper's pipeline by default)."""

    denoise: bool = Field(True, description="Denoise inputs that come with confounds "
                                            "(false: series used as given).")
    drop_volumes: int = Field(10, ge=0, description="Initial volumes removed (paper: 10).")
    smoothing_fwhm: float | None = Field(4.0, ge=0.0, description="Gaussian FWHM in mm "
                                                                  "(null or 0: none).")
    motion: Literal["friston24", "6", "none"] = Field(
        "friston24", description="Head-motion regressors: Friston-24, the 6 rigid-body "
                                 "parameters, or none.")
    wm: bool = Field(True, description="Regress the white-matter signal.")
    csf: bool = Field(True, description="Regress the CSF signal.")
    global_signal: bool = Field(True, description="Regress the global signal.")
    detrend: bool = Field(True, description="Remove linear trends (series and confounds).")
    high_pass: float | None = Field(0.01, gt=0.0, description="High-pass cutoff in Hz "
                                                              "(null: none).")
    low_pass: float | None = Field(0.1, gt=0.0, description="Low-pass cutoff in Hz "
                                                            "(null: none).")
    filter: Literal[FILTERS] = Field(
        "butterworth", description="Band-pass filter: butterworth (nilearn's signal.clean: "
                                   "order 5, zero-phase) or ideal (DPABI's FFT filter, "
                                   "y_IdealFilter: bins outside the band set to zero).")
    order: list[Literal["smooth", "regress", "filter", "clean"]] = Field(
        ["smooth", "regress", "filter"],
        description="Steps in the order they run ('clean' = nilearn's combined "
                    "filter + regress); a step left out does not run.")

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingSettings:
        order = list(self.order)
        if len(set(order)) != len(order):
            raise ValueError(f"order {','.join(order)}: a step is repeated")
        if "clean" in order and {"regress", "filter"} & set(order):
            raise ValueError("order: 'clean' (regress + filter in one step) replaces "
                             "'regress' and 'filter'")
        if (self.high_pass is not None and self.low_pass is not None
                and self.high_pass >= self.low_pass):
            raise ValueError(f"high-pass {self.high_pass} Hz must be below low-pass "
                             f"{self.low_pass} Hz")
        return self


# ----------------------------------------------------------------------------- CFH
class CFHSettings(Section):
    """CFH and the block engine."""

    counterpart: Literal["group", "subject"] = Field(
        "group", description="How each voxel's functionally homotopic counterpart is found: "
                             "group (argmax of the correlation summed over the reference "
                             "subjects, as the CFH literature computes it) or subject (each "
                             "subject's own maximum).")
    reference_subjects: list[str] = Field(
        [], description="Reference set of the group counterpart: subject ids, one "
                        "participants filter such as group==control, or another cohort "
                        "store (empty: every ingested subject, label-free).")
    subject_batch: int = Field(16, ge=1, description="Subjects per GEMM of the group "
                                                     "counterpart (their time axes "
                                                     "concatenated).")
    subject_chain: int = Field(4, ge=1, description="Batches of the group counterpart "
                                                    "summed one after another before the "
                                                    "chains are tree-summed: longer chains "
                                                    "hold fewer partial sums in memory, "
                                                    "shorter ones give more parallel tasks.")
    block: int = Field(4096, ge=2, description="Voxels per side of one correlation block.")
    split_every: int = Field(8, ge=2, description="Fan-in of the tree reductions across "
                                                  "blocks.")
    backend: Literal["numpy", "cupy"] = Field(
        "numpy", description="Array backend of the kernels (cupy needs CuPy and a GPU on the "
                             "workers).")
    kernel: Literal["auto", "lowrank", "full"] = Field(
        "auto", description="CFH kernel: lowrank (exact: a GEMM at the series' effective "
                            "rank, a rigorous bound, the candidates recomputed; in group mode "
                            "the group sum over each subject's low-rank coefficients, the "
                            "candidate counterparts then summed exactly), full (the full-rank "
                            "GEMM) or auto (low rank where the data allow, else full rank); "
                            "the same counterparts either way.")


class AutonomySettings(Section):
    """The autonomy index (Wang, Buckner & Liu 2014)."""

    threshold: float = Field(0.25, gt=-1.0, lt=1.0, description="Correlations above it "
                                                                "count as connections.")


# ----------------------------------------------------------------------------- statistics
class DesignSettings(Section):
    """The group design's covariates."""

    covariates: list[str] = Field([], description="Nuisance covariates of the GLM (none "
                                                  "unless named).")
    categorical: list[str] = Field(["sex"], description="Covariates coded as categories "
                                   "(dummy-coded); every other covariate must be numeric.")
    drop_missing: bool = Field(False, description="Drop (and report) subjects with missing "
                                                  "values instead of stopping.")
    combine_runs: str = Field("mean", description="How a participant's maps (sessions, runs) "
                              "become its one row of the design: 'mean' (the mean of all its "
                              "maps) or a session/run such as 'ses-1', 'run-2' or "
                              "'ses-1_run-1' (the mean of the maps that match: that one map "
                              "when it names one).")

    @field_validator("combine_runs")
    @classmethod
    def _combine(cls, v: str) -> str:
        parse_combine(v)
        return v.strip()


class StatsSettings(Section):
    """Group inference."""

    n_perm: int = Field(5000, ge=1, description="Permutations, identity included "
                                                "(exhaustive when fewer exist).")
    scheme: Literal["draper-stoneman", "freedman-lane"] = Field(
        "draper-stoneman", description="Permutation scheme: draper-stoneman (labels permuted, "
                                       "as SnPM, the paper's) or freedman-lane (residuals "
                                       "permuted, as FSL randomise and PALM).")
    cluster_p: float = Field(0.001, gt=0.0, lt=1.0, description="Cluster-forming voxel p, "
                                                                "one-sided.")
    connectivity: Literal[6, 18, 26] = Field(18, description="Voxel connectivity of "
                                                             "clusters (18 as SPM).")
    tfce: bool = Field(False, description="Also TFCE (E = 0.5, H = 2) with FWE p.")
    mass_tfce_on: Literal["t", "z"] = Field(
        "t", description="Map cluster mass and TFCE are computed on: t, or z (PALM's "
                         "convention: each t turned into the z of the same p, so mass and "
                         "TFCE can be set beside PALM's; extents and voxel FWE are the same).")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="FWE level of significant "
                                                           "clusters.")
    seed: int = Field(0, ge=0, description="Seed of the permutations.")
    batch_size: int | None = Field(None, ge=1, description="Permutations per Dask task "
                                                           "(null: sized to the cluster).")
    metric: Literal["cfh", "cfh_subject", "vmhc", "ai"] = Field(
        "cfh", description="Per-subject map of the store analysed: cfh (group counterpart), "
                           "cfh_subject (per-subject maximum), vmhc or ai (autonomy index).")
    atlases: list[Literal["aal", "harvard_oxford"]] = Field(
        ["aal", "harvard_oxford"], description="Atlases labelling the clusters.")


class NullCheckSettings(Section):
    """False positives measured on the cohort itself (``cfhdask null-check``)."""

    enabled: bool = Field(False, description="Run the null-check as a stage of `cfhdask run` "
                                             "(splits of one group into pseudo-groups).")
    level: str | None = Field(None, description="Group whose participants are split (null: "
                              "the second of the two groups compared, e.g. the controls of "
                              "levels [patient, control]).")
    sizes: list[int] | None = Field(None, description="Sizes of the two pseudo-groups (null: "
                                    "the study's group sizes when they fit in the group, else "
                                    "half each).")
    n_splits: int = Field(1000, ge=1, description="Random splits (distinct).")
    n_perm: int = Field(1000, ge=1, description="Permutations per split, identity included.")
    seed: int = Field(0, ge=0, description="Seed of the splits and of their permutations.")
    uncorrected_p: float = Field(0.001, gt=0.0, lt=1.0, description="Uncorrected parametric "
                                 "voxel threshold whose false-positive rate is shown beside "
                                 "the corrected methods.")
    interval: Literal["clopper-pearson", "wilson"] = Field(
        "clopper-pearson", description="Binomial 95% interval of each rate.")

    @field_validator("sizes")
    @classmethod
    def _two_sizes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or min(v) < 1):
            raise ValueError(f"two positive sizes are needed, got {v}")
        return v


class ClinicalSettings(Section):
    """Table 1 and clinical correlations."""

    variables: list[str] = Field([], description="Clinical variables correlated with "
                                                 "cluster values in the first group.")
    table1: list[str] = Field([], description="Variables of Table 1 (empty: the covariates "
                                              "and the clinical variables).")
    normality_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Shapiro-Wilk level "
                                   "choosing the t-test or Mann-Whitney U.")
    methods: list[Literal["pearson", "spearman"]] = Field(
        ["pearson", "spearman"], description="Partial correlation methods.")


class ReportSettings(Section):
    """The HTML report and its figure files."""

    min_cluster_voxels: int = Field(2, ge=1, description="Clusters smaller than this "
                                    "(voxels) are left out of the report's tables and "
                                    "figures; clusters.tsv lists every cluster.")
    max_cluster_figures: int = Field(8, ge=0, description="At most this many cluster "
                                     "slice figures per contrast.")
    glass_brain: Literal["clusters", "thresholded"] = Field(
        "clusters", description="Glass brains show the significant clusters of each "
                                "contrast, or the whole map thresholded at the "
                                "cluster-forming threshold.")
    dpi: int = Field(300, ge=50, le=1200, description="Resolution of the PNG figure files.")
    vector_format: Literal["pdf", "svg"] = Field("pdf", description="Vector format written "
                                                 "next to each PNG figure file.")


class SimulateSettings(Section):
    """Simulated cohorts (``cfhdask simulate``, ``cfhdask demo``)."""

    n_patients: int = Field(30, ge=0, description="Patients.")
    n_controls: int = Field(30, ge=0, description="Controls.")
    n_volumes: int = Field(230, ge=2, description="Volumes per run (the paper: 230, the "
                                                  "first 10 dropped).")
    tr: float = Field(2.0, gt=0.0, description="Repetition time in seconds.")
    grid: str = Field("3mm", description="MNI grid: 3mm (61x73x61, the paper's), 2mm or "
                                         "<N>mm.")
    layout: Literal["bids", "fmriprep", "dpabi"] = Field(
        "fmriprep", description="File layout: BIDS raw, fMRIPrep derivatives with confounds, "
                                "or DPABI.")
    effect_size: float = Field(0.6, ge=0.0, description="Scale of the planted CFH increases "
                                                        "(0: a null cohort).")
    seed: int = Field(0, ge=0, description="Seed of the cohort.")


class Settings(Section):
    """All sections (the ``cfhdask:`` namespace of Dask's config)."""

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    inputs: InputsSettings = Field(default_factory=InputsSettings)
    mask: MaskSettings = Field(default_factory=MaskSettings)
    preprocessing: PreprocessingSettings = Field(default_factory=PreprocessingSettings)
    cfh: CFHSettings = Field(default_factory=CFHSettings)
    autonomy: AutonomySettings = Field(default_factory=AutonomySettings)
    design: DesignSettings = Field(default_factory=DesignSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    null_check: NullCheckSettings = Field(default_factory=NullCheckSettings)
    clinical: ClinicalSettings = Field(default_factory=ClinicalSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    simulate: SimulateSettings = Field(default_factory=SimulateSettings)


# ----------------------------------------------------------------------------- errors
def _loc(loc: tuple, style: str, prefix: str) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if style == "cli":
        return "--" + parts[-1].replace("_", "-") if parts else ""
    if style == "api":
        return ".".join(parts) or prefix or "settings"
    name = ".".join([prefix, *parts] if prefix else parts) or prefix or "settings"
    if style == "yaml":
        return f"config key '{name}'"
    if style == "dask":
        return f"Dask config 'cfhdask.{name}'"
    return name


def error_message(exc: ValidationError, *, style: str = "api", prefix: str = "") -> str:
    """One line naming the key (``yaml``/``dask``), the option (``cli``) or the argument."""
    msgs = []
    for err in exc.errors():
        where = _loc(tuple(err.get("loc", ())), style, prefix)
        text = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, Mapping) or err.get("type") == "missing" else \
            f" (got {got!r})"
        text = text[:1].lower() + text[1:]
        msgs.append(f"{where}: {text}{shown}" if where else f"{text}{shown}")
    return "; ".join(msgs)


# ----------------------------------------------------------------------------- access
def _normalise(obj: Any) -> Any:
    """Dask config keys may use ``-`` where fields use ``_``."""
    if isinstance(obj, Mapping):
        return {str(k).replace("-", "_"): _normalise(v) for k, v in obj.items()}
    return obj


def default_metric() -> str:
    """The map analysed when none is named: ``stats.metric``, except that ``cfh`` means the
    per-subject maximum (``cfh_subject``) when ``cfh.counterpart`` is ``subject``."""
    s = settings()
    if s.stats.metric == "cfh" and s.cfh.counterpart == "subject":
        return "cfh_subject"
    return s.stats.metric


def settings() -> Settings:
    """The validated settings: model defaults, the shipped file, the user's Dask config.

    Read afresh on each call, so ``dask.config.set({"cfhdask.stats.n_perm": 200})``
    takes effect at once.

    Raises
    ------
    CfhdaskInputError
        A bad value in the Dask config, naming its key.
    """
    raw = _normalise(dask.config.get("cfhdask", default={}) or {})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise CfhdaskInputError(error_message(exc, style="dask")) from None


def resolve(section: str, overrides: Mapping[str, Any] | None = None, *,
            style: str = "api", base: BaseModel | None = None) -> Any:
    """One section of :func:`settings` with ``overrides`` applied (None values ignored).

    Parameters
    ----------
    section : str
        Section name, e.g. ``"stats"``.
    overrides : mapping, optional
        Field values given explicitly (CLI options, API arguments).
    style : {"api", "cli", "yaml"}
        How an error names the value: ``n_perm``, ``--n-perm`` or ``config key 'stats.n_perm'``.
    base : BaseModel, optional
        Start from this section instead of the current settings (e.g. a study's).

    Returns
    -------
    The validated section model.
    """
    current = base if base is not None else getattr(settings(), section)
    given = {k: list(v) if isinstance(v, tuple) else v
             for k, v in (overrides or {}).items() if v is not None}
    if not given:
        return current
    try:
        return type(current).model_validate({**current.model_dump(), **given})
    except ValidationError as exc:
        raise CfhdaskInputError(error_message(exc, style=style, prefix=section)) from None


# ----------------------------------------------------------------------------- the file
def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix(
        "...").strip()


def _yaml_lines(model: BaseModel, indent: int) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = name.replace("_", "-")
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()[0]
            lines.append(f"{pad}{key}:{'  # ' + doc if doc else ''}")
            lines.extend(_yaml_lines(value, indent + 2))
        else:
            dumped = _yaml_value(value.model_dump() if isinstance(value, BaseModel) else value)
            lines.append(f"{pad}{key}: {dumped}  # {info.description or ''}".rstrip())
    return lines


def defaults_yaml() -> str:
    """The text of the shipped ``cfhdask.yaml``: every default, with its meaning."""
    head = [
        "# Defaults of cfhdask, under the `cfhdask:` namespace of Dask's config.",
        "# Generated from cfhdask/settings.py (the one place defaults are written):",
        "#   python -c 'import cfhdask.settings as s; print(s.defaults_yaml(), end=\"\")'",
        "# Override in ~/.config/dask/cfhdask.yaml, a YAML file in $DASK_CONFIG, or with",
        "# environment variables such as DASK_CFHDASK__STATS__N_PERM=10000.",
        "cfhdask:",
    ]
    return "\n".join(head + _yaml_lines(Settings(), 2)) + "\n"


def _register_defaults() -> None:
    with open(YAML_PATH) as f:
        dask.config.update_defaults(yaml.safe_load(f))
    if os.environ.get("CFHDASK_WRITE_CONFIG"):
        dask.config.ensure_file(source=YAML_PATH)


_register_defaults()
