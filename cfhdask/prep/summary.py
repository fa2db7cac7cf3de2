"""What denoising will do, per subject, before anything runs (``cfhdask confounds``, ``--dry-run``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput
from cfhdask.io.nifti import read_header
from cfhdask.prep.confounds import file_label
from cfhdask.prep.pipeline import DenoiseParams, SubjectPlan, plan_subject

log = logging.getLogger(__name__)


@dataclass
class PlanRow:
    """One line of the summary: a planned run, or a run that will be skipped."""

    subject: str
    plan: SubjectPlan | None = None
    problem: str | None = None
    bold: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the run can be denoised."""
        return self.problem is None


def plan_inputs(
    inputs: Sequence[SubjectInput],
    params: DenoiseParams,
    skipped: Sequence[tuple[str, str]] = (),
    storage_options: dict | None = None,
) -> list[PlanRow]:
    """Check every run (headers, tables, sidecars; no image data) and plan it.

    A problem with one run is recorded on its row; the others are still
    planned.  ``skipped`` rows (from discovery) are listed as problems.
    """
    rows: list[PlanRow] = []
    for inp in inputs:
        try:
            header = read_header(inp.bold, storage_options)
            plan = plan_subject(inp, header, params, storage_options=storage_options)
            rows.append(PlanRow(inp.subject, plan, bold=inp.bold))
        except CfhdaskInputError as exc:
            rows.append(PlanRow(inp.subject, problem=str(exc), bold=inp.bold))
    rows += [PlanRow(sub, problem=why) for sub, why in skipped]
    return sorted(rows, key=lambda r: r.subject)


def _regressor_summary(plan: SubjectPlan) -> str:
    names = plan.names
    parts = []
    n_motion = sum(1 for n in names if n.startswith(("trans_", "rot_")))
    if n_motion:
        parts.append("Friston-24" if n_motion == 24 else f"{n_motion} motion")
    parts += [n for n in names if not n.startswith(("trans_", "rot_"))]
    parts += [f"{n}*" for n in plan.from_data]
    return ", ".join(parts) if parts else "-"


def format_plan_table(rows: Sequence[PlanRow]) -> str:
    """A plain-text table: subject, files, TR, volumes kept, regressors, steps or problem.

    Regressors marked ``*`` are computed from the images (MNI template masks).
    """
    header = ("subject", "bold", "confounds", "TR (s)", "kept/total", "regressors", "steps")
    lines: list[tuple[str, ...]] = [header]
    problems = []
    for r in rows:
        if r.ok:
            p = r.plan
            tr = "-" if p.tr is None else f"{p.tr:g} ({p.tr_source})"
            lines.append((r.subject, file_label(p.bold), file_label(p.confounds_file), tr,
                          f"{p.n_kept}/{p.n_volumes}", _regressor_summary(p),
                          " > ".join(p.steps) or "-"))
        else:
            lines.append((r.subject, file_label(r.bold), "-", "-", "-", "-", "SKIPPED"))
            problems.append(f"  {r.subject}: {r.problem}")
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    notes = [f"  {r.subject}: {n}" for r in rows if r.ok for n in r.plan.notes
             if n.startswith("TR ")]
    if any(r.ok and r.plan.from_data for r in rows):
        out.append("* computed from the images (MNI template masks), as DPABI does")
    if notes:
        out += ["TR notes:", *notes]
    if problems:
        out += [f"{len(problems)} run(s) will be skipped:", *problems]
    return "\n".join(out)
