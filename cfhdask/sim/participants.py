"""The simulated participants table, distributed like the paper's Table 1.

Continuous variables are drawn, then each group's sample is standardised and
rescaled to the paper's mean and SD (so Table 1 of a 30 vs 30 cohort is close to
the paper's), then rounded.  SAS and SDS are correlated (r ~ 0.6).  Sex is
exactly 12/18 M/F per 30 (proportionally for other sizes).  JRS severity and
frequency are integers 1-3 (medians 1 and 2); JRS total is their sum (2-6).
Controls have ``n/a`` for the clinical variables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: (mean, SD) per group from the paper's Table 1: patient, control.
TABLE1 = {
    "age": ((51.07, 6.46), (49.93, 5.99)),
    "education": ((9.40, 3.62), (9.97, 3.96)),
    "SAS": ((43.33, 6.73), (36.67, 5.44)),
    "SDS": ((44.97, 6.45), (38.40, 5.26)),
}
ILLNESS_DURATION = (12.33, 4.9)
MALE_FRACTION = 12 / 30
#: P(score = 1, 2, 3) of the JRS subscales.
JRS_SEVERITY_P = (0.55, 0.30, 0.15)
JRS_FREQUENCY_P = (0.25, 0.50, 0.25)
COLUMNS = ["participant_id", "group", "age", "sex", "education", "SAS", "SDS",
           "illness_duration", "JRS_total", "JRS_severity", "JRS_frequency"]
INT_COLUMNS = ["age", "education", "SAS", "SDS", "illness_duration", "JRS_total",
               "JRS_severity", "JRS_frequency"]


def participant_ids(n_patients: int, n_controls: int) -> list[tuple[str, str]]:
    """``[(participant_id, group), ...]``: patients ``sub-P01``.., then controls ``sub-C01``.."""
    width = max(2, len(str(max(n_patients, n_controls, 1))))
    return ([(f"sub-P{i + 1:0{width}d}", "patient") for i in range(n_patients)]
            + [(f"sub-C{i + 1:0{width}d}", "control") for i in range(n_controls)])


def _matched(rng, n: int, mean: float, sd: float, z: np.ndarray | None = None) -> np.ndarray:
    """n values whose sample mean/SD equal (mean, sd) before rounding."""
    z = rng.standard_normal(n) if z is None else z
    if n > 1:
        z = (z - z.mean()) / (z.std(ddof=1) + 1e-12)
    return mean + sd * z


def simulate_participants(n_patients: int = 30, n_controls: int = 30,
                          seed: int = 0) -> pd.DataFrame:
    """Demographic and clinical table of a simulated cohort.

    Parameters
    ----------
    n_patients, n_controls : int
        Group sizes.
    seed : int
        Cohort seed (the table uses its own stream of it).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`; integer-valued scores are float64 with NaN
        for controls' clinical variables (as ``pandas.read_csv`` reads the
        ``participants.tsv`` back).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    rows = []
    for gi, (group, n) in enumerate((("patient", n_patients), ("control", n_controls))):
        if n == 0:
            continue
        cols: dict[str, np.ndarray] = {}
        cols["age"] = np.clip(np.rint(_matched(rng, n, *TABLE1["age"][gi])), 18, 90)
        cols["education"] = np.clip(np.rint(_matched(rng, n, *TABLE1["education"][gi])), 0, 22)
        z1 = rng.standard_normal(n)
        z2 = 0.6 * z1 + 0.8 * rng.standard_normal(n)
        cols["SAS"] = np.clip(np.rint(_matched(rng, n, *TABLE1["SAS"][gi], z=z1)), 25, 100)
        cols["SDS"] = np.clip(np.rint(_matched(rng, n, *TABLE1["SDS"][gi], z=z2)), 25, 100)
        n_male = int(round(n * MALE_FRACTION))
        sex = np.array(["M"] * n_male + ["F"] * (n - n_male))[rng.permutation(n)]
        if group == "patient":
            dur = np.clip(np.rint(_matched(rng, n, *ILLNESS_DURATION)), 1, None)
            sev = rng.choice([1, 2, 3], size=n, p=JRS_SEVERITY_P)
            freq = rng.choice([1, 2, 3], size=n, p=JRS_FREQUENCY_P)
            clin = (dur, sev + freq, sev, freq)
        else:
            clin = (np.full(n, np.nan),) * 4
        cols["illness_duration"], cols["JRS_total"], cols["JRS_severity"], cols["JRS_frequency"] = (
            np.asarray(c, dtype=np.float64) for c in clin)
        ids = [pid for pid, g in participant_ids(n_patients, n_controls) if g == group]
        for i in range(n):
            rows.append({"participant_id": ids[i], "group": group, "sex": sex[i],
                         **{k: float(v[i]) for k, v in cols.items()}})
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("age", "education", "SAS", "SDS"):
        df[c] = df[c].astype(np.int64)
    return df


def write_participants(df: pd.DataFrame, path) -> None:
    """Write the table as BIDS ``participants.tsv`` (integers, ``n/a`` for missing)."""
    out = df.copy()
    for c in INT_COLUMNS:
        if c in out:
            out[c] = [("n/a" if pd.isna(v) else str(int(v))) for v in out[c]]
    out.to_csv(path, sep="\t", index=False, na_rep="n/a")
