"""Every default of cfhdask, in one typed settings model.

:class:`Settings` has one section per part of the analysis (``cluster``,
``store``, ``inputs``, ``mask``, ``preprocessing``, ``cfh``, ``autonomy``,
``design``, ``stats``, ``clinical``, ``report``, ``simulate``).  The command
line, the shipped ``cfhdask.yaml``, ``study.yaml`` and the Python API all take
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
    "AutonomySettings", "CFHSettings", "ClinicalSettings", "ClusterSettings", "DesignSettings", "InputsSettings",
    "JobqueueSettings", "KubernetesSettings", "MaskSettings", "PreprocessingSettings",
    "ReportSettings", "Settings", "SimulateSettings", "StatsSettings", "StoreSettings",
    "default_metric", "defaults_yaml",
    "error_message", "resolve", "settings",
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
class JobqueueSettings(Section):
    """dask-jobqueue worker jobs (``--cluster slurm|pbs``)."""

    cores: int = Field(8, ge=1, description="Cores per job.")
    memory: str = Field("32GiB", description="Memory per job.")
    processes: int = Field(2, ge=1, description="Worker processes per job (threads = cores / "
                                                "processes).")
    walltime: str = Field("04:00:00", description="Walltime of a worker job.")
    queue: str | None = Field(None, description="Queue / partition (null: the site default).")
    account: str | None = Field(None, description="Account / project to charge.")
    jobs: int = Field(4, ge=1, description="Worker jobs submitted.")


class KubernetesSettings(Section):
    """dask-kubernetes workers (``--cluster kubernetes``)."""

    image: str = Field("ghcr.io/dask/dask:latest", description="Worker image.")
    n_workers: int = Field(4, ge=1, description="Worker pods.")


class ClusterSettings(Section):
    """Where the Dask work runs."""

    kind: Literal["local", "slurm", "pbs", "kubernetes"] = Field(
        "local", description="Cluster started when no scheduler is given: an embedded "
                             "LocalCluster, dask-jobqueue SLURM/PBS jobs or Kubernetes pods.")
    scheduler: str | None = Field(None, description="Address of a running Dask scheduler to "
                                                    "attach to, e.g. tcp://head:8786.")
    scheduler_file: str | None = Field(None, description="Scheduler file of a running Dask "
                                                         "cluster.")
    n_workers: int | None = Field(None, ge=1, description="Workers of the embedded "
                                                          "LocalCluster (null: one per core).")
    threads_per_worker: int | None = Field(None, ge=1, description="Threads per embedded "
                                                                   "worker (null: 1).")
    memory_limit: str = Field("auto", description="Memory limit per embedded worker "
                                                  "(as distributed.LocalCluster).")
    processes: bool = Field(True, description="Embedded workers are processes (else threads).")
    dashboard_address: str | None = Field("127.0.0.1:0", description="Dashboard of the "
                                          "embedded cluster (':0' picks a free port; null: "
                                          "no dashboard).")
    blas_threads: int | None = Field(None, ge=1, description="BLAS threads per Dask thread "
                                     "(null: cores // (workers x threads), at least 1).")
    jobqueue: JobqueueSettings = Field(default_factory=JobqueueSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def _one_scheduler(self) -> ClusterSettings:
        if self.scheduler and self.scheduler_file:
            raise ValueError("give a scheduler (--scheduler) or a scheduler file "
                             "(--scheduler-file), not both")
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
    block: int = Field(4096, ge=2, description="Voxels per side of one correlation block.")
    split_every: int = Field(8, ge=2, description="Fan-in of the tree reductions across "
                                                  "blocks.")
    backend: Literal["numpy", "cupy"] = Field(
        "numpy", description="Array backend of the kernels (cupy needs CuPy and a GPU on the "
                             "workers).")


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
