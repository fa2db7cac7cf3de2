"""Shared helpers of the benchmark scripts: a baseline tree from git, peak memory and CPU time of a process tree,
workers busy sampled on a Dask scheduler, median timings, the float32 GEMM floor, a simulated
demo subject, the nilearn denoising peer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]


def warm_kernels(tree: Path | None = None) -> str:
    """Write numba's cache of ``tree``'s kernels (None: this checkout's) before anything is
    measured, with this checkout's ``cfhdask/warmup.py`` (a baseline may predate it); its
    printed line, which says what compiling cost.  Without it the first run of each fresh
    tree pays every worker's compilation (seconds of CPU each) and the cohort size it runs
    at looks slower than it is."""
    import tempfile

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree or REPO)}
    code = (f"import runpy, sys; sys.argv = ['warmup']; "
            f"runpy.run_path({str(REPO / 'cfhdask' / 'warmup.py')!r}, run_name='__main__')")
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, text=True,
                             capture_output=True)
    if out.returncode != 0:
        return f"warm-up of {tree or 'this tree'} failed: {out.stderr.strip()[-300:]}"
    return f"{tree or 'this tree'}: {out.stdout.strip()}"


def close_cluster(client, cluster) -> None:
    """Close the client and the cluster; a close that times out on a loaded machine (after
    the figures were emitted) is noted on stderr, not a failed run."""
    try:
        client.close()
        cluster.close(timeout=120)
    except TimeoutError as exc:
        print(f"closing the cluster timed out ({exc!r})", file=sys.stderr)


def extract_tree(ref: str, dest: Path) -> Path:
    """The ``cfhdask`` package at git ``ref`` under ``dest`` (a baseline to run alongside:
    ``PYTHONPATH=dest``).  Raises ``subprocess.CalledProcessError`` when git cannot."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "cfhdask"],
                             capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


class PeakMemory:
    """Peak summed RSS of this process and its children, sampled in a thread.

    ``children=False``: this process only (a scan for children reads every process of
    the machine, about 1 ms each sample: 3-5 % of a core, counted as this process's CPU
    time, for a benchmark that starts none).
    """

    def __init__(self, interval: float = 0.05, children: bool = True):
        self.interval = interval
        self.children = children
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True) if self.children else ():
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.t_end = time.perf_counter()
        self.peak = max(self.peak, self._rss())


class CpuTime:
    """CPU seconds (user + system) of this process and its children over a block.

    Less sensitive than wall time to other work on a shared machine; the
    children (Dask workers) are those alive at the start and at the end.
    """

    def __init__(self, children: bool = True):
        self.children = children
        self.seconds = 0.0
        self.by_process: dict[str, float] = {}

    def _total(self) -> dict[int, float]:
        me = psutil.Process()
        procs = [me] + (me.children(recursive=True) if self.children else [])
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def __enter__(self) -> CpuTime:
        self._start = self._total()
        return self

    def __exit__(self, *exc) -> None:
        end = self._total()
        me = psutil.Process().pid
        self.by_process = {}
        for pid, v in end.items():
            try:
                name = "this process" if pid == me else " ".join(
                    psutil.Process(pid).cmdline()[-2:])[-40:]
            except psutil.Error:
                name = str(pid)
            name = f"{name} [{pid}]"
            self.by_process[name] = v - self._start.get(pid, 0.0)
        self.seconds = sum(self.by_process.values())


class BusySampler:
    """Workers busy (sampled on the scheduler) and client RSS, every ``interval`` s.

    A worker is busy when the scheduler has a task assigned to it
    (``WorkerState.processing``).  ``busy`` holds one count per sample and
    ``times`` when it was taken: on a loaded machine the samples come late
    and unevenly, so the shares are weighted by time (each count holds until
    the next sample), not by sample.  ``rss0`` / ``rss_peak`` the resident
    memory of this (the client) process.  ``worker_cpu`` the CPU seconds the workers'
    processes used over the run (``Client.run`` on every worker at the start and the
    end; a worker that joined or left meanwhile is counted from zero or left out):
    divided by the seconds, the cores the workers kept busy, which tells a stage
    that is short of tasks from one that is short of cores (more workers than
    cores: every busy worker shares them).
    """

    def __init__(self, client, interval: float = 0.2):
        self.client, self.interval = client, interval
        self.busy: list[int] = []
        self.times: list[float] = []
        self.t_end = 0.0
        self.rss0 = psutil.Process().memory_info().rss
        self.rss_peak = self.rss0
        self.client_cpu = 0.0
        self.worker_cpu = 0.0
        self._worker_cpu0: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu() -> float:
        t = psutil.Process().cpu_times()
        return t.user + t.system

    def _worker_cpus(self) -> dict:
        try:
            return dict(self.client.run(BusySampler._cpu))
        except Exception:  # noqa: BLE001 - the cluster is closing
            return {}

    @staticmethod
    def _busy(dask_scheduler=None) -> int:
        return sum(1 for w in dask_scheduler.workers.values() if w.processing)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                n = int(self.client.run_on_scheduler(self._busy))
                self.times.append(time.perf_counter())
                self.busy.append(n)
            except Exception:  # noqa: BLE001 - the client is closing
                break
            self.rss_peak = max(self.rss_peak, me.memory_info().rss)
            self._stop.wait(self.interval)

    def summary(self, n_workers: int) -> dict:
        """Median workers busy, their mean share of ``n_workers`` (overall and by tenth of
        the time: where the idle time is), all weighted by time, samples, client RSS (MiB) and CPU seconds
        (the sampling thread included)."""
        busy = np.asarray(self.busy or [0], dtype=float)
        times = np.asarray(self.times or [0.0])
        end = max(self.t_end, times[-1])
        # busy as a step function of time on a fine even grid: every share is time-weighted
        grid = np.linspace(times[0], end, 2000, endpoint=False) if end > times[0] else times[:1]
        share = busy[np.searchsorted(times, grid, side="right") - 1] / max(1, n_workers)
        return {"busy_median": float(np.median(share) * max(1, n_workers)),
                "busy_share": float(share.mean()),
                "busy_tenths": [float(t.mean()) for t in np.array_split(share, 10) if t.size],
                "samples": int(busy.size),
                "client_rss_peak_mib": self.rss_peak / 2**20,
                "client_rss_growth_mib": (self.rss_peak - self.rss0) / 2**20,
                "client_cpu_s": self.client_cpu,
                "worker_cpu_s": self.worker_cpu,
                "worker_cores": self.worker_cpu / max(end - times[0], 1e-9)}

    def __enter__(self) -> BusySampler:
        self._worker_cpu0 = self._worker_cpus()
        self.client_cpu = -self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.t_end = time.perf_counter()
        self.client_cpu += self._cpu()
        end = self._worker_cpus()
        self.worker_cpu = sum(v - self._worker_cpu0.get(k, 0.0) for k, v in end.items())


def cores_text(r: dict) -> str:
    """The cores a stage's workers kept busy (:class:`BusySampler`), against this machine's:
    near all of them, more concurrency cannot make the stage faster here."""
    return (f"workers' CPU {r.get('worker_cores', float('nan')):.2f} of {os.cpu_count()} "
            "cores")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def nilearn_denoise(bold: str, ijk: np.ndarray, confounds: np.ndarray, *, drop: int,
                    fwhm: float, tr: float, high_pass: float, low_pass: float,
                    tissue_masks: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The peer of cfhdask's denoising, the paper's order with nibabel and nilearn.

    ``nibabel.load`` + ``get_fdata`` of the whole run, the first ``drop``
    volumes dropped; the means inside ``tissue_masks`` appended to
    ``confounds`` (when given); ``nilearn.image.smooth_img``; the voxels
    ``ijk``; ``nilearn.signal.clean`` to regress (detrended), then to filter.

    Returns
    -------
    (ndarray (T, n) float64, dict)
        The series and the seconds of each stage (``load``, ``smooth``,
        ``clean``) and in all (``denoise``).
    """
    import nibabel as nib
    from nilearn import image, signal

    t0 = time.perf_counter()
    img = nib.load(bold)
    data = img.get_fdata(dtype=np.float32)[..., drop:]
    if tissue_masks is not None:
        means = [data[m].mean(axis=0, dtype=np.float64) for m in tissue_masks]
        confounds = np.hstack([confounds, np.stack(means, axis=1)])
    t1 = time.perf_counter()
    smoothed = image.smooth_img(nib.Nifti1Image(data, img.affine), fwhm).get_fdata(
        dtype=np.float32)
    del data
    series = smoothed[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T
    del smoothed
    t2 = time.perf_counter()
    out = signal.clean(series, confounds=confounds, detrend=True, standardize=None,
                       filter=False)
    out = signal.clean(out, detrend=False, standardize=None, high_pass=high_pass,
                       low_pass=low_pass, t_r=tr)
    t3 = time.perf_counter()
    return out, {"load": t1 - t0, "smooth": t2 - t1, "clean": t3 - t2, "denoise": t3 - t0}


def gemm_floor(left: np.ndarray, right: np.ndarray, max_bytes: float = 1 << 26) -> None:
    """``left @ right.T`` in float32, in row pieces of at most ``max_bytes`` output (64 MiB: the
    fastest piece size here; a 1 GiB output buffer made BLAS 2x slower)."""
    rows = max(1, int(max_bytes // (4 * right.shape[0])))
    out = np.empty((min(rows, left.shape[0]), right.shape[0]), dtype=np.float32)
    rt = right.T
    for s in range(0, left.shape[0], rows):
        e = min(s + rows, left.shape[0])
        np.matmul(left[s:e], rt, out=out[: e - s])


DROP = 10
GM_THRESHOLD = 0.2


def demo_subject(grid, n_volumes: int, tr: float, *, seed: int = 0, denoise: bool = True,
                 fwhm: float | None = 4.0, band_filter: str = "butterworth"):
    """Standardised (left, right) series and validity of one simulated subject.

    ``denoise=False``: the raw simulated series (volumes dropped only).
    """
    from cfhdask.cfh.kernels import standardize
    from cfhdask.prep.confounds import friston24
    from cfhdask.prep.denoise import smooth_gather
    from cfhdask.prep.pipeline import apply_operator, series_operator
    from cfhdask.sim.anatomy import build_anatomy
    from cfhdask.sim.cohort import subject_rng
    from cfhdask.sim.signals import simulate_subject_series
    from cfhdask.sim.writers import tissue_signals

    anat = build_anatomy(grid)
    sub = simulate_subject_series(anat, subject_rng(seed, "control", 0), "control",
                                  n_volumes=n_volumes, tr=tr)
    data, motion = sub.data[DROP:], sub.motion[DROP:]
    keep = (anat.gm > GM_THRESHOLD) & (anat.hemisphere != 0)
    if denoise:
        confounds = np.hstack([friston24(motion), tissue_signals(anat, data).to_numpy()])
        if fwhm:
            volumes = np.moveaxis(anat.to_volume(data), 0, -1)
            series = smooth_gather(volumes, anat.affine, fwhm, anat.ijk[keep])
            del volumes
        else:
            series = data[:, keep].T
        op = series_operator(confounds, n_time=data.shape[0], steps=["regress", "filter"],
                             detrend_first=True, detrend=True, tr=tr, high_pass=0.01,
                             low_pass=0.1, filter=band_filter)
        series = apply_operator(series, op)
    else:
        series = np.ascontiguousarray(data[:, keep].T)
    hemi = anat.hemisphere[keep]
    zl, lv = standardize(series[hemi < 0])
    zr, rv = standardize(series[hemi > 0])
    return zl, zr, lv, rv
