"""``study.yaml``: the whole study in one typed config (:class:`StudyConfig`).

The sections shared with the rest of cfhdask (``mask``, ``preprocessing``,
``cfh``, ``autonomy``, ``stats``, ``null_check``, ``clinical``, ``report``, ``cluster``)
are the models of :mod:`cfhdask.settings`, and their defaults are the current settings
(model defaults, ``cfhdask.yaml``, the user's Dask config): a lab-wide
``~/.config/dask/cfhdask.yaml`` applies to every study unless the study says
otherwise.  :func:`validate_config` checks a parsed YAML mapping before any
compute, resolves relative paths against the YAML file's folder and checks
that the files it names exist; every problem is a one-line error naming the
key.  :func:`schema_markdown` renders every key for the README and
``cfhdask run --schema``.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import parse_combine
from cfhdask.prep.confounds import MAX_TR
from cfhdask.settings import (
    AutonomySettings,
    CFHSettings,
    ClinicalSettings,
    ClusterSettings,
    DesignSettings,
    InputsSettings,
    MaskSettings,
    NullCheckSettings,
    PreprocessingSettings,
    ReportSettings,
    Section,
    StatsSettings,
    error_message,
    settings,
)

__all__ = ["StudyConfig", "load_config", "schema_markdown", "validate_config"]


class StudyInputs(InputsSettings):
    """The input runs: exactly one of ``bold``, ``bids_derivatives``, ``dpabi``."""

    bold: list[str] = Field([], description="4D NIfTI paths/URLs or glob patterns "
                                            "(plain-file input).")
    confounds: list[str] = Field([], description="Confounds tables paired with `bold` by "
                                                 "subject id.")
    bids_derivatives: str | None = Field(None, description="fMRIPrep derivatives folder "
                                                           "(path or URL).")
    dpabi: str | None = Field(None, description="DPABI working folder (FunImgARCW*, "
                                                "RealignParameter).")
    participant_label: list[str] = Field([], description="Only these participants (labels "
                                                         "with or without 'sub-').")
    tr: float | None = Field(None, gt=0.0, description="Repetition time (s) overriding "
                                                       "headers and sidecars.")

    @field_validator("tr")
    @classmethod
    def _seconds(cls, v: float | None) -> float | None:
        if v is not None and v > MAX_TR:
            raise ValueError(f"{v:g} looks like milliseconds (a TR above {MAX_TR:g} s); "
                             f"give seconds, e.g. {v / 1000:g}")
        return v


class StudyGroups(Section):
    """The two groups compared."""

    column: str = Field("group", description="Participants column holding the group.")
    levels: list[str] | None = Field(None, description="The two groups, first minus second "
                                     "is the first contrast (null: the column's two values, "
                                     "sorted).")

    @field_validator("levels")
    @classmethod
    def _two(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) != 2 or v[0] == v[1]):
            raise ValueError(f"exactly two different groups are compared, got {v}")
        return v


class StudyConfig(Section):
    """One study: inputs, every analysis setting, outputs."""

    name: str = Field("CFH study", description="Title of the study, shown in the report.")
    output: str = Field("cfhdask_output", description="Output folder (relative to the YAML "
                                                      "file): store, stats, report.")
    store: str | None = Field(None, description="Cohort Zarr store (path or URL); default "
                                                "OUTPUT/cohort-<fingerprint>.zarr.")
    storage_options: dict[str, Any] = Field({}, description="fsspec options of every URL "
                                            "(credentials, endpoint), e.g. {anon: true}.")
    participants: str = Field(description="Participants TSV/CSV with participant_id.")
    inputs: StudyInputs = Field(default_factory=StudyInputs)
    groups: StudyGroups = Field(default_factory=StudyGroups)
    covariates: list[str] = Field([], description="Nuisance covariates of the GLM and the "
                                                  "partial correlations (none unless named).")
    categorical: list[str] = Field(["sex"], description="Covariates coded as categories; "
                                   "every other covariate must be numeric.")
    drop_missing: bool = Field(False, description="Drop (and report) subjects with missing "
                                                  "values instead of stopping.")
    combine_runs: str = DesignSettings.model_fields["combine_runs"]
    mask: MaskSettings = Field(default_factory=MaskSettings)
    preprocessing: PreprocessingSettings = Field(default_factory=PreprocessingSettings)
    metrics: list[Literal["cfh", "cfh_subject", "vmhc", "ai"]] | None = Field(
        None, description="Per-subject maps computed and analysed, one group analysis (and "
                          "stats folder) each: cfh (group counterpart), cfh_subject "
                          "(per-subject maximum), vmhc, ai; the first is the report's main "
                          "result (null: stats.metric, cfh read as cfh_subject when "
                          "cfh.counterpart is subject).")
    cfh: CFHSettings = Field(default_factory=CFHSettings)
    autonomy: AutonomySettings = Field(default_factory=AutonomySettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    null_check: NullCheckSettings = Field(default_factory=NullCheckSettings)
    clinical: ClinicalSettings = Field(default_factory=ClinicalSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @field_validator("combine_runs")
    @classmethod
    def _combine(cls, v: str) -> str:
        parse_combine(v)
        return v.strip()

    @field_validator("metrics")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("name at least one metric (or leave it out: stats.metric)")
        return list(dict.fromkeys(v)) if v is not None else None

    def analysed_metrics(self) -> list[str]:
        """The metrics of the study, the main one first."""
        if self.metrics:
            return list(self.metrics)
        m = self.stats.metric
        return ["cfh_subject" if m == "cfh" and self.cfh.counterpart == "subject" else m]


#: Top-level study keys whose defaults come from the ``design`` settings section.
_FROM_DESIGN = ("covariates", "categorical", "drop_missing", "combine_runs")
#: Sections whose defaults are the current settings of the same name.
_SECTIONS = ("inputs", "mask", "preprocessing", "cfh", "autonomy", "stats", "null_check",
             "clinical", "report", "cluster")


def current_defaults() -> dict:
    """Study defaults: the current settings for the shared sections."""
    s = settings()
    out: dict[str, Any] = {k: getattr(s, k).model_dump() for k in _SECTIONS}
    out.update({k: getattr(s.design, k) for k in _FROM_DESIGN})
    return out


def _merge(base: dict, given: Mapping) -> dict:
    out = dict(base)
    for k, v in given.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _known_keys(loc: tuple) -> list[str]:
    model: Any = StudyConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields) if isinstance(model, type) else []


def _raise(exc: ValidationError) -> None:
    for err in exc.errors():
        if err.get("type") == "extra_forbidden":
            loc = tuple(str(p) for p in err["loc"])
            known = ", ".join(_known_keys(loc))
            raise CfhdaskInputError(
                f"config: unknown key '{'.'.join(loc)}'"
                + (f" (known here: {known})" if known else "")) from None
    raise CfhdaskInputError(error_message(exc, style="yaml")) from None


def _abs(value: str | None, base_dir: str) -> str | None:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base_dir, value))


def validate_config(raw: Mapping | None, base_dir: str = ".") -> StudyConfig:
    """Check a study mapping, fill in defaults and resolve paths.

    Parameters
    ----------
    raw : mapping
        The parsed YAML.
    base_dir : str
        Folder of the YAML file: relative paths are resolved against it.

    Returns
    -------
    StudyConfig

    Raises
    ------
    CfhdaskInputError
        Naming the key: unknown key, wrong type or value, missing required key,
        several or no input sources, a file or folder that does not exist.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise CfhdaskInputError("study config: the top level must be a mapping of keys")
    for k, v in raw.items():
        if k in _SECTIONS and v is not None and not isinstance(v, Mapping):
            raise CfhdaskInputError(f"config key '{k}': expected a mapping, got {v!r}")
    raw = {k: v for k, v in raw.items() if not (k in _SECTIONS and v is None)}
    try:
        cfg = StudyConfig.model_validate(_merge(current_defaults(), raw))
    except ValidationError as exc:
        _raise(exc)
    base_dir = os.path.abspath(base_dir)
    inp = cfg.inputs
    pre = cfg.preprocessing
    for key, cut in (("low_pass", pre.low_pass), ("high_pass", pre.high_pass)):
        if inp.tr is not None and pre.denoise and cut is not None and cut >= 0.5 / inp.tr:
            raise CfhdaskInputError(
                f"config key 'preprocessing.{key}': {cut:g} Hz is at or above the Nyquist "
                f"frequency {0.5 / inp.tr:.4g} Hz of 'inputs.tr' {inp.tr:g} s")
    sources = [bool(inp.bold), bool(inp.bids_derivatives), bool(inp.dpabi)]
    if sum(sources) != 1:
        raise CfhdaskInputError("config: give exactly one of 'inputs.bold', "
                                "'inputs.bids_derivatives', 'inputs.dpabi'")
    for key in ("participants", "inputs.bids_derivatives", "inputs.dpabi"):
        section, _, name = key.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        value = _abs(getattr(owner, name), base_dir)
        if value is not None and "://" not in value and not os.path.exists(value):
            raise CfhdaskInputError(f"config key '{key}': no such file or folder: {value}")
        setattr(owner, name, value)
    if cfg.mask.source != "gm":
        cfg.mask.source = _abs(cfg.mask.source, base_dir)
        if "://" not in cfg.mask.source and not os.path.exists(cfg.mask.source):
            raise CfhdaskInputError(f"config key 'mask.source': no such file: {cfg.mask.source}")
    inp.bold = [_abs(b, base_dir) for b in inp.bold]
    inp.confounds = [_abs(c, base_dir) for c in inp.confounds]
    cfg.output = _abs(cfg.output, base_dir)
    cfg.store = _abs(cfg.store, base_dir)
    return cfg


def load_config(path: str) -> StudyConfig:
    """Read and validate a ``study.yaml`` file."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise CfhdaskInputError(f"study config not found: {path}") from None
    except yaml.YAMLError as exc:
        raise CfhdaskInputError(f"study config {path} is not valid YAML: {exc}") from None
    return validate_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


# ----------------------------------------------------------------------------- schema
def _choices(annotation: Any) -> list[Any]:
    """Values of a Literal annotation (also inside Optional / list)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType, list):
        return [c for a in typing.get_args(annotation) for c in _choices(a)]
    return []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else None


def _rows(model: type[BaseModel], defaults: Mapping, prefix: str = "") -> Iterator[tuple]:
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        key = f"{prefix}{name}"
        if sub is not None:
            yield from _rows(sub, defaults.get(name, {}) if defaults else {}, key + ".")
            continue
        required = field.is_required()
        default = None if required else (defaults.get(name) if defaults and name in defaults
                                          else field.get_default(call_default_factory=True))
        yield key, required, default, field.description or "", _choices(field.annotation)


def schema_markdown() -> str:
    """Every ``study.yaml`` key as a Markdown table (key, default, meaning)."""
    defaults = current_defaults()
    out = ["| key | default | meaning |", "|---|---|---|"]
    for key, required, default, help_, choices in _rows(StudyConfig, defaults):
        shown = "(required)" if required else yaml.safe_dump(
            default, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        ch = f" One of {', '.join(str(c) for c in choices)}." if choices else ""
        out.append(f"| `{key}` | `{shown}` | {help_}{ch} |")
    return "\n".join(out)
