"""The options of a group inference, in one place: the ``stats`` and ``design`` settings.

``cfhdask stats`` (:func:`cfhdask.stats.inference.group_inference`) and
``cfhdask null-check`` (:func:`cfhdask.stats.nullcheck.null_check`) run the
same inference, so they take the same keywords (:class:`InferenceKeywords`:
covariates, scheme, cluster-forming threshold, connectivity, TFCE, metric ...),
resolved once against the settings into an :class:`InferenceOptions`.
Callers that already hold resolved settings (the CLIs, a study) pass them on
with :meth:`InferenceOptions.keywords`.  What differs between the two (the
number of permutations and the seed: ``stats`` or ``null_check`` section;
atlases) stays with each function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import DesignSettings, StatsSettings, default_metric, resolve

__all__ = ["DESIGN_KEYS", "InferenceKeywords", "InferenceOptions", "STATS_KEYS"]


class InferenceKeywords(TypedDict, total=False):
    """Keywords shared by every group inference (``None``: the settings' value).

    ``covariates``, ``categorical``, ``drop_missing``, ``combine_runs`` are
    the ``design`` section; ``scheme``, ``cluster_p``, ``connectivity``,
    ``tfce``, ``mass_tfce_on``, ``alpha``, ``metric``, ``batch_size`` the
    ``stats`` section (see :class:`cfhdask.settings.StatsSettings`);
    ``tfce_dh`` fixes the TFCE step (default: each map's own peak / 100, as FSL and PALM).
    """

    covariates: Sequence[str] | None
    categorical: Sequence[str] | None
    drop_missing: bool | None
    combine_runs: str | None
    scheme: str | None
    cluster_p: float | None
    connectivity: int | None
    tfce: bool | None
    tfce_dh: float | None
    mass_tfce_on: str | None
    alpha: float | None
    metric: str | None
    batch_size: int | None


#: Keywords of the ``stats`` and of the ``design`` section.
STATS_KEYS: tuple[str, ...] = ("scheme", "cluster_p", "connectivity", "tfce", "mass_tfce_on",
                               "alpha", "metric", "batch_size")
DESIGN_KEYS: tuple[str, ...] = ("covariates", "categorical", "drop_missing", "combine_runs")


def _listed(v: Any) -> Any:
    return None if v is None else list(v)


@dataclass(frozen=True)
class InferenceOptions:
    """Resolved options of one group inference.

    Attributes
    ----------
    stats : StatsSettings
    design : DesignSettings
    tfce_dh : float or None
        Fixed TFCE step (``None``: each map, observed or permuted, its own peak / 100).
    """

    stats: StatsSettings
    design: DesignSettings
    tfce_dh: float | None = None

    @classmethod
    def resolve(cls, keywords: Mapping[str, Any], *, style: str = "api",
                stats: Mapping[str, Any] | None = None) -> InferenceOptions:
        """Resolve :class:`InferenceKeywords` (and more ``stats`` fields) against the settings.

        Parameters
        ----------
        keywords : mapping
            :class:`InferenceKeywords` (``None`` values take the settings').
        style : {"api", "cli", "yaml"}
            How an error names a bad value (:func:`cfhdask.settings.resolve`).
        stats : mapping, optional
            Other fields of the ``stats`` section (``n_perm``, ``seed``, ``atlases``).

        Raises
        ------
        TypeError
            A keyword that is not an inference option.
        CfhdaskInputError
            A bad value, named as ``style`` says.
        """
        unknown = sorted(set(keywords) - set(InferenceKeywords.__annotations__))
        if unknown:
            raise TypeError(f"unexpected inference option(s): {', '.join(unknown)}")
        st = {k: keywords.get(k) for k in STATS_KEYS}
        st["metric"] = st["metric"] or default_metric()
        st.update({k: _listed(v) if k == "atlases" else v for k, v in (stats or {}).items()})
        des = {k: _listed(keywords.get(k)) if k in ("covariates", "categorical")
               else keywords.get(k) for k in DESIGN_KEYS}
        tfce_dh = keywords.get("tfce_dh")
        if tfce_dh is not None and not tfce_dh > 0:
            raise CfhdaskInputError(f"tfce_dh must be > 0, got {tfce_dh}")
        return cls(stats=resolve("stats", st, style=style),
                   design=resolve("design", des, style=style), tfce_dh=tfce_dh)

    def keywords(self) -> InferenceKeywords:
        """These options as :class:`InferenceKeywords`, to pass on to an inference."""
        out: dict[str, Any] = {k: getattr(self.stats, k) for k in STATS_KEYS}
        out.update({k: getattr(self.design, k) for k in DESIGN_KEYS})
        out["tfce_dh"] = self.tfce_dh
        return InferenceKeywords(**out)
