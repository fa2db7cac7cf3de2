"""The group counterpart: each voxel's counterpart found once for a cohort.

As the CFH literature computes it (the ``FuncHomoConn.m`` of the TMStarget
toolbox, and the paper's two-step wording), the counterpart of a voxel is the
argmax over the other hemisphere of the correlation **summed over a
reference set of subjects**, row-wise for left voxels and column-wise for
right voxels, ties to the smaller index.  Each subject's CFH is then that
subject's own r with the group counterpart, Fisher-z'd
(:mod:`cfhdask.cfh.compute`).

The reference set is every ingested subject by default: it uses no group
label, so permutation inference on the maps stays valid.  It may instead be
a list of subjects, a participants filter (``group==control``) or another
store on the same grid.  The store keeps the counterpart with a fingerprint
of its reference set (subjects and when they were ingested); when the
reference changes (subjects added to an "all" reference, another filter),
the counterpart and every map computed with the old one are recomputed, and
the log says so.  The sum is computed by :func:`run_group_sum` (the plan of
:mod:`cfhdask.cfh.groupsum`, streamed batch by batch) without ever
materialising the left x right matrix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cfhdask.cfh.compute import series_bytes, unit_size
from cfhdask.cfh.group_lowrank import (
    PROBE_SUBJECTS,
    LowRankDeclined,
    SubjectBases,
    lowrank_group_sum,
    subject_bases,
)
from cfhdask.cfh.groupsum import GroupPlan
from cfhdask.cfh.kernels import CONSTANT_RTOL
from cfhdask.cfh.lowrank_group import combine_candidates, concat_candidates
from cfhdask.cfh.mirror import counterpart_displacement
from cfhdask.cfh.reductions import combine_max
from cfhdask.cluster.restrictions import rescue_loose_restrictions
from cfhdask.cluster.waves import MEMORY_FRACTION, cluster_capacity
from cfhdask.errors import CfhdaskInputError
from cfhdask.inflight import release
from cfhdask.inputs import ID_COLUMN, match_subjects

log = logging.getLogger(__name__)

__all__ = ["MIN_GROUP_BLOCKS", "Reference", "ensure_group_counterpart", "filter_columns",
           "group_block", "hemisphere_blocks", "resolve_reference", "run_group_sum"]

OPTION = "--reference-subjects"

#: The group sum cuts each hemisphere into at least this many blocks when
#: ``cfh.block`` would give fewer (a coarse grid), so that one batch of subjects
#: is about this number squared of GEMM tasks: enough to keep a cluster busy.
MIN_GROUP_BLOCKS = 4
#: Blocks the rule above makes smaller are a multiple of this many voxels.
GROUP_BLOCK_ALIGN = 128
_FILTER = re.compile(r"^\s*([^=!]+?)\s*(==|!=)\s*(.*?)\s*$")


@dataclass
class Reference:
    """The subjects whose summed correlations define the group counterpart.

    Attributes
    ----------
    source : CohortStore
        Where their series are read (the store itself, or another store).
    subjects : list of str
        The reference subjects, sorted.
    spec : dict
        How the set was named (``kind``: all, subjects, filter or store), for
        provenance.
    """

    source: Any
    subjects: list[str]
    spec: dict = field(default_factory=dict)
    _attrs: dict | None = field(default=None, init=False, repr=False, compare=False)

    def attrs(self) -> dict[str, dict]:
        """Each subject's attributes (:meth:`CohortStore.subjects_attrs`: the documents
        read at once), read once."""
        if self._attrs is None:
            self._attrs = self.source.subjects_attrs(self.subjects)
        return self._attrs

    def fingerprint(self) -> str:
        """A hash of the reference's content: subjects and when/how they were ingested."""
        attrs = self.attrs()
        items = [[s, attrs[s].get("ingested"), attrs[s].get("n_volumes"),
                  str(attrs[s].get("source"))] for s in self.subjects]
        blob = json.dumps({"subjects": items, "constant_rtol": CONSTANT_RTOL, "v": 1},
                          sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _is_store(value: str) -> bool:
    return "://" in value or "/" in value or "\\" in value or value.rstrip("/").endswith(".zarr")


def filter_columns(reference: Sequence[str] | None) -> list[str]:
    """The participants columns that the filters of a reference set name."""
    return [m.group(1) for m in map(_FILTER.match, [str(v) for v in reference or []]) if m]


def _filter_subjects(store, filters: list[tuple[str, str, str]],
                     participants: pd.DataFrame | str | None) -> list[str]:
    from cfhdask.io.participants import read_participants

    shown = ", ".join(f"{c}{op}{v}" for c, op, v in filters)
    if participants is None:
        raise CfhdaskInputError(f"{OPTION} {shown}: a filter needs the participants table "
                                "(--participants FILE)")
    table = participants if isinstance(participants, pd.DataFrame) else \
        read_participants(participants)
    keep = pd.Series(True, index=table.index)
    for col, op, value in filters:
        if col not in table.columns:
            raise CfhdaskInputError(f"{OPTION} {col}{op}{value}: no column {col!r} in the "
                                    f"participants table (columns: {list(table.columns)})")
        hit = table[col].astype(str).str.strip() == value
        keep &= hit if op == "==" else ~hit
    ids = set(table.loc[keep, ID_COLUMN].astype(str))
    matched = match_subjects(table[ID_COLUMN].astype(str), store.subjects("ingested"))
    out = sorted(s for s, pid in matched.items() if pid in ids)
    if not out:
        raise CfhdaskInputError(f"{OPTION} {shown}: no ingested subject of {store.url} "
                                "matches")
    return out


def resolve_reference(store, reference: Sequence[str] | None,
                      participants: pd.DataFrame | str | None = None,
                      storage_options: dict | None = None) -> Reference:
    """The reference set named by ``cfh.reference-subjects`` (empty: every ingested subject).

    Parameters
    ----------
    store : CohortStore
        The store whose maps are computed.
    reference : sequence of str, optional
        Subject ids; or filters ``COLUMN==VALUE`` / ``COLUMN!=VALUE`` (all must
        hold) on ``participants``; or one URL of another cohort store on the
        same grid (its ingested subjects, read from it).
    participants : DataFrame or path, optional
    storage_options : dict, optional
        fsspec options of another store given as a URL.

    Raises
    ------
    CfhdaskInputError
        Naming ``--reference-subjects``: unknown subjects, a filter without a
        table or matching nobody, a store on another grid, a mix of kinds.
    """
    items = [str(v).strip() for v in (reference or []) if str(v).strip()]
    if not items:
        subjects = store.subjects("ingested")
        if not subjects:
            raise CfhdaskInputError(f"store {store.url}: no ingested subject for the group "
                                    "counterpart")
        return Reference(store, subjects, {"kind": "all"})
    filters = [m.groups() for m in map(_FILTER.match, items) if m]
    if filters:
        if len(filters) != len(items):
            raise CfhdaskInputError(f"{OPTION}: give subject ids, filters (COLUMN==VALUE) or "
                                    f"one store, not a mix: {', '.join(items)}")
        subjects = _filter_subjects(store, [tuple(f) for f in filters], participants)
        return Reference(store, subjects, {"kind": "filter", "filters": items})
    if any(_is_store(v) for v in items):
        if len(items) != 1:
            raise CfhdaskInputError(f"{OPTION}: name one reference store, not "
                                    f"{', '.join(items)}")
        from cfhdask.io.store import open_store

        other = open_store(items[0], storage_options=storage_options)
        if not store.same_voxels(other):
            raise CfhdaskInputError(f"{OPTION} {items[0]}: that store's grid or mask differs "
                                    f"from {store.url}'s; a reference store needs the same "
                                    "voxels")
        subjects = other.subjects("ingested")
        if not subjects:
            raise CfhdaskInputError(f"{OPTION} {items[0]}: no ingested subject there")
        return Reference(other, subjects, {"kind": "store", "store": other.url})
    ingested = set(store.subjects("ingested"))
    missing = [s for s in items if s not in ingested]
    if missing:
        raise CfhdaskInputError(f"{OPTION}: not ingested in {store.url}: {', '.join(missing)}")
    return Reference(store, sorted(set(items)), {"kind": "subjects"})


def group_block(block: int, n_left: int, n_right: int) -> int:
    """Voxels per side of a block of the group sum: ``block``, or less on a small grid.

    At most ``block`` (``cfh.block``), and small enough that the larger
    hemisphere makes :data:`MIN_GROUP_BLOCKS` blocks (a multiple of
    :data:`GROUP_BLOCK_ALIGN` voxels, at least one).  It depends on the grid alone, never on
    the cluster, so the sums are the same whatever ran them.
    """
    per = -(-max(int(n_left), int(n_right), 1) // MIN_GROUP_BLOCKS)
    per = max(GROUP_BLOCK_ALIGN, per // GROUP_BLOCK_ALIGN * GROUP_BLOCK_ALIGN)
    return int(max(1, min(int(block), per)))


def hemisphere_blocks(start: int, stop: int, block: int, chunk: int) -> list[tuple[int, int]]:
    """Cut voxels ``start:stop`` into blocks of about ``block``, on the store's chunk bounds.

    Inner bounds fall on multiples of ``block`` rounded to whole Zarr chunks,
    so every read decompresses only chunks it needs; a first or last piece
    shorter than half a block joins its neighbour.
    """
    step = max(chunk, block // chunk * chunk) if block >= chunk else block
    bounds = [start]
    b = (start // step + 1) * step
    if b - start < step // 2:
        b += step
    while b < stop:
        bounds.append(b)
        b += step
    if len(bounds) > 1 and stop - bounds[-1] < step // 2:
        bounds.pop()
    bounds.append(stop)
    return [(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)
            if bounds[k + 1] > bounds[k]]


def _strips(plan: GroupPlan, budget: float, t_batch: int, threads: int,
            n_workers: int = 1) -> tuple[list, int]:
    """Row strips (lists of A blocks) and lanes at once that fit ``budget`` bytes.

    One lane in flight holds the partial sums of its strip (rows x all of B,
    float32), two batches of series of the strip and of B (B once per worker:
    each fetches the blocks it multiplies, see :func:`series_owners`), and a
    GEMM output per worker thread.  Strips are as few as fit; lanes as many as
    fit, and no more than keep every thread busy.
    """
    rows = [b - a for a, b in plan.a_ranges]
    n_b = sum(b - a for a, b in plan.b_ranges)
    block = max(rows + [b - a for a, b in plan.b_ranges])

    def lane_bytes(n_rows: int) -> int:
        return 4 * (n_rows * n_b + 2 * (n_rows + n_b * max(1, n_workers)) * t_batch
                    + 2 * block * block)

    n_blocks = len(rows)
    for n_strips in range(1, n_blocks + 1):
        per = -(-n_blocks // n_strips)
        strips = [list(range(k, min(k + per, n_blocks))) for k in range(0, n_blocks, per)]
        need = lane_bytes(max(sum(rows[i] for i in st) for st in strips))
        if need <= budget or per == 1:
            break
    by_memory = max(1, int(budget // need)) if np.isfinite(budget) else len(plan.lanes)
    tasks_per_batch = len(strips[0]) * len(plan.b_ranges)
    by_threads = max(1, -(-2 * threads // tasks_per_batch))
    return strips, max(1, min(len(plan.lanes), by_memory, by_threads))


def worker_parts(strip: Sequence[int], n_b: int,
                 workers: Sequence[tuple[str, int]]) -> list[tuple[str | None, list]]:
    """The (A block, B block) pairs of a strip, cut into one contiguous run per worker.

    Pairs in row-major order are shared out in proportion to each worker's
    threads.  A worker's links then run on that worker (a loose restriction:
    elsewhere only if it is lost), so the partial sums never travel between
    workers from batch to batch.  With one worker (or none known) there is one
    part and no restriction.
    """
    pairs = [(i, j) for i in strip for j in range(n_b)]
    if len(workers) <= 1:
        return [(None, pairs)]
    total = sum(max(1, t) for _, t in workers)
    out, start, acc = [], 0, 0
    for addr, t in workers:
        acc += max(1, t)
        stop = round(len(pairs) * acc / total)
        if stop > start:
            out.append((addr, pairs[start:stop]))
        start = stop
    return out


def series_owners(parts: Sequence[tuple[str | None, list]],
                  threads: Sequence[int] | None = None,
                  load: list[int] | None = None) -> dict[tuple[str, int], int]:
    """Which part computes each series block of a batch: every block is computed once.

    An A block goes to the part with most pairs in its row; a B block, which
    every part needs, to a part among those that need it.  Among equals, the
    part with the least series per thread so far (``load``, then the first).
    The other parts fetch it: a transfer costs far less than reading and
    standardising the block again.  ``load`` (series per part, updated in
    place) carries over from batch to batch, so the batches in flight compute
    their series on different workers where the pairs leave a choice.
    """
    threads = list(threads or [1] * len(parts))
    load = [0] * len(parts) if load is None else load
    rows: dict[int, list[int]] = {}
    need_b: dict[int, list[int]] = {}
    for w, (_, pairs) in enumerate(parts):
        for i, j in pairs:
            rows.setdefault(i, [0] * len(parts))[w] += 1
            if w not in need_b.setdefault(j, []):
                need_b[j].append(w)

    def least(candidates) -> int:
        return min(candidates, key=lambda v: (load[v] / max(1, threads[v]), v))

    owners = {}
    for i, n in sorted(rows.items()):
        owners[("a", i)] = w = least([v for v, c in enumerate(n) if c == max(n)])
        load[w] += 1
    for j, needers in sorted(need_b.items()):
        owners[("b", j)] = w = least(needers)
        load[w] += 1
    return owners


def _run_strip(plan: GroupPlan, client, strip: list[int], n_active: int,
               workers: Sequence[tuple[str, int]] = (), bases: SubjectBases | None = None,
               slack: float | None = None) -> dict:
    """Every lane of ``plan`` over the A blocks ``strip``, ``n_active`` lanes at a time, each
    with two batches in flight, the links shared out to ``workers`` (:func:`worker_parts`)
    and each series block computed once (:func:`series_owners`); then the lanes' sums
    reduced (to candidates, with ``bases`` and ``slack``: a low-rank sum).  Returns host
    arrays (candidate sets)."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
    from distributed import as_completed

    lanes = [list(v) for v in plan.lanes]
    todo = list(range(len(lanes)))[::-1]
    ends: dict[int, dict] = {}
    valid: dict[tuple[str, int], dict[int, Any]] = {}
    resid: dict[tuple[str, int], dict[int, Any]] = {}
    open_: dict[int, dict] = {}  # lane -> {"prev": links of the last batch, "flight": [...]}
    count: dict[tuple[int, int], int] = {}
    batch_of: dict = {}  # link key -> (lane, batch)
    ac = as_completed()
    parts = worker_parts(strip, len(plan.b_ranges), workers)
    threads = [dict(workers).get(a, 1) for a, _ in parts]
    load = [0] * len(parts)  # series per part so far, over the batches of this strip
    n_links = len(strip) * len(plan.b_ranges)

    def where(addr: str | None) -> dict:
        return {} if addr is None else {"workers": [addr], "allow_other_workers": True}

    def submit(lane: int) -> None:
        # one graph a batch, a layer per worker and kind: each update-graph message costs
        # the scheduler tens of ms on a busy node, so one per worker delayed the next batch
        st = open_[lane]
        q = lanes[lane].pop(0)
        owners = series_owners(parts, threads, load)
        layers: dict = {}
        for w, (addr, _) in enumerate(parts):
            own = {side: [k for (s, k), o in owners.items() if s == side and o == w]
                   for side in ("a", "b")}
            # before the links of the batch in flight on the same worker: a series block
            # feeds the links of a whole row or column of the next batch
            layers[f"series-{w}"] = MaterializedLayer(
                plan.series_tasks(q, own["a"], own["b"], bases),
                annotations={"priority": 1, **where(addr)})
        series_layers = set(layers)
        for w, (addr, pairs) in enumerate(parts):
            layers[f"links-{w}"] = MaterializedLayer(plan.link_tasks(q, pairs, st["prev"]),
                                                     annotations=where(addr))
        dsk = {k: v for layer in layers.values() for k, v in layer.items()}
        vkeys = [k for k in dsk if k[0].startswith(("grp-bvalid-", "grp-bresid-"))]
        lkeys = [k for k in dsk if k[0].startswith("grp-link-")]
        graph = HighLevelGraph(layers, {n: set() if n in series_layers else series_layers
                                        for n in layers})
        futs = client.get(graph, vkeys + lkeys, sync=False)
        for k, f in zip(vkeys, futs[:len(vkeys)], strict=True):
            into = valid if k[0].startswith("grp-bvalid-") else resid
            into.setdefault((k[1], k[2]), {})[q] = f
        prev = {(k[1], k[2]): f for k, f in zip(lkeys, futs[len(vkeys):], strict=True)}
        st["prev"] = prev  # the series are released when their links are done
        st["flight"].append(q)
        count[(lane, q)] = 0
        for f in prev.values():
            batch_of[f.key] = (lane, q)
            ac.add(f)

    def start() -> None:
        while todo and len(open_) < n_active:
            lane = todo.pop()
            open_[lane] = {"prev": {}, "flight": []}
            submit(lane)
            if lanes[lane]:
                submit(lane)

    try:
        start()
        for fut in ac:
            if fut.status != "finished":
                fut.result()  # raises the task's exception here
            lane, q = batch_of.pop(fut.key)
            count[(lane, q)] += 1
            if count[(lane, q)] < n_links:
                continue
            st = open_[lane]
            st["flight"].remove(q)
            if lanes[lane]:
                submit(lane)
            elif not st["flight"]:
                ends[lane] = st["prev"]
                del open_[lane]
                log.info("Group sum: lane %d/%d done (%d batch(es) of up to %d subjects)",
                         len(ends), len(plan.lanes), len(plan.lanes[lane]), plan.batch)
                start()
        ends_ij = {ij: [ends[lane][ij] for lane in sorted(ends)] for ij in ends[0]}
        refs = {key: [v[q] for q in sorted(v)] for key, v in valid.items()}
        if bases is not None:
            e_refs = {key: [v[q] for q in sorted(v)] for key, v in resid.items()}
            tasks, rows, cols, vkeys = plan.candidate_graph(strip, ends_ij, refs, e_refs,
                                                            float(slack))
            order = sorted(vkeys)
            res = client.get(tasks, rows + cols + [vkeys[k] for k in order], sync=True)
            return {"rows": res[:len(rows)], "cols": res[len(rows):len(rows) + len(cols)],
                    "valid": dict(zip(order, res[len(rows) + len(cols):], strict=True))}
        out = plan.reduce_graph(strip, ends_ij, refs)
        names = list(out)
        res = client.compute([out[k] for k in names], sync=True)
        return dict(zip(names, res, strict=True))
    except BaseException:
        client.cancel([f for st in open_.values() for f in st["prev"].values()])
        raise


def run_group_sum(plan: GroupPlan, client, *, t_batch: int,
                  memory_fraction: float = MEMORY_FRACTION, bases: SubjectBases | None = None,
                  slack: float | None = None) -> dict[str, Any]:
    """Run a :class:`~cfhdask.cfh.groupsum.GroupPlan` on ``client`` in memory-bounded pieces.

    The batches of each lane are submitted one after another, two in flight;
    as many lanes run at once, and the A side is cut into as few row strips,
    as ``memory_fraction`` of the workers' memory holds (:func:`_strips`).
    Each worker keeps its share of the block pairs, with their partial sums,
    from batch to batch (:func:`worker_parts`); each series block is computed
    once per batch and fetched by the other workers that need it.
    Memory is therefore flat in the number of subjects.  Neither choice changes
    the arithmetic: the result equals
    :func:`~cfhdask.cfh.groupsum.group_sum_graph` of the same plan, bit for
    bit, on any cluster.

    Parameters
    ----------
    plan : GroupPlan
    client : distributed.Client
    t_batch : int
        The longest concatenated time axis of a batch (for the memory bound).
    memory_fraction : float
        Share of the workers' memory the sums and series in flight may take.
    bases, slack : optional
        A low-rank sum (:mod:`cfhdask.cfh.lowrank_group`): the subjects' bases
        on the workers (:class:`~cfhdask.cfh.group_lowrank.SubjectBases`), and
        the bound's slack.

    Returns
    -------
    dict of NumPy arrays
        As :func:`~cfhdask.cfh.groupsum.group_sum_graph` computes them; for a
        low-rank sum, ``left``/``right`` (:class:`CandidateSet` of every voxel)
        and ``left_valid``/``right_valid``.
    """
    rescue_loose_restrictions(client)  # the pinned links survive every worker leaving
    cap = cluster_capacity(client)
    budget = cap.memory * memory_fraction if cap.memory > 0 else float("inf")
    workers = list(cap.nthreads)
    strips, n_active = _strips(plan, budget, t_batch, cap.threads, len(workers))
    log.info("Group sum: %d batch(es) in %d lane(s), %d at once; %d row strip(s) of the left "
             "hemisphere", len(plan.batches), len(plan.lanes), n_active, len(strips))
    parts = []
    for k, strip in enumerate(strips):
        parts.append(_run_strip(plan, client, strip, n_active, workers, bases, slack))
        if len(strips) > 1:
            log.info("Group sum: row strip %d/%d done", k + 1, len(strips))
    if bases is not None:
        n_b = len(plan.b_ranges)
        return {"left": concat_candidates([cs for p in parts for cs in p["rows"]]),
                "right": concat_candidates([combine_candidates([p["cols"][j] for p in parts])
                                            for j in range(n_b)]),
                "left_valid": np.concatenate([p["valid"][("a", i)] for p, st in
                                              zip(parts, strips, strict=True) for i in st]),
                "right_valid": np.concatenate([parts[0]["valid"][("b", j)]
                                               for j in range(n_b)])}
    out = {key: np.concatenate([p[key] for p in parts]) for key in
           ("left_sum", "left_arg", "left_valid")}
    m = np.where(np.isnan(parts[0]["right_sum"]), -np.inf, parts[0]["right_sum"])
    i = parts[0]["right_arg"]
    for p in parts[1:]:
        m, i = combine_max(m, i, np.where(np.isnan(p["right_sum"]), -np.inf, p["right_sum"]),
                           p["right_arg"])
    out["right_sum"] = np.where(np.isfinite(m), m, np.nan).astype(np.float32)
    out["right_arg"] = i
    out["right_valid"] = parts[0]["right_valid"]
    return out


def _compute(store, reference: Reference, cfg, client) -> dict:
    src = reference.source
    n_left, n_lr = src.n_left, src.n_left + src.n_right
    block = group_block(cfg.block, n_left, src.n_right)
    left = hemisphere_blocks(0, n_left, block, src.voxel_chunk)
    right = hemisphere_blocks(n_left, n_lr, block, src.voxel_chunk)
    reader = src.series_reader(reference.subjects)
    plan = GroupPlan.make(reader, len(reference.subjects), left, right,
                          batch=cfg.subject_batch, chain=cfg.subject_chain,
                          split_every=cfg.split_every, backend=cfg.backend,
                          token=(src.url, reference.fingerprint()))
    attrs = reference.attrs()
    lengths = [int(attrs[s].get("n_volumes") or 0) for s in reference.subjects]
    t_batch = max(sum(lengths[b[0]:b[-1] + 1]) for b in plan.batches)
    kernel = cfg.kernel if cfg.backend == "numpy" else "full"
    res, facts = None, {"kernel": cfg.kernel, "kernel_used": "full"}
    if kernel != "full":
        # small subjects share a basis task, as they share a maps unit (compute.unit_size)
        per_task = unit_size(len(reference.subjects), series_bytes(src, reference.subjects),
                             cluster_capacity(client).threads)
        bases = None
        try:
            bases, ranks = subject_bases(client, reader, len(reference.subjects), n_lr,
                                         plan.tok, per_task,
                                         probe=PROBE_SUBJECTS if kernel == "auto" else 0)
            res = lowrank_group_sum(plan, client, bases, ranks, kernel=kernel,
                                    run_group_sum=run_group_sum)
            facts = {**facts, "kernel_used": "lowrank", **res.pop("lowrank")}
        except LowRankDeclined as exc:
            log.info("Group counterpart: the full-rank sum instead (%s)", exc)
            facts["reason"] = str(exc)
        finally:
            if bases is not None:
                release(bases.units)
    elif cfg.kernel != "full":
        log.info("Group counterpart: the low-rank sum runs on the CPU; the %s backend runs "
                 "the full-rank sum", cfg.backend)
    if res is None:
        res = run_group_sum(plan, client, t_batch=t_batch)
    index = np.full(store.n_voxels, -1, dtype=np.int32)
    summed = np.full(store.n_voxels, np.nan, dtype=np.float32)
    la, ra = res["left_arg"], res["right_arg"]
    index[store.left] = np.where(la >= 0, la + store.n_left, -1)
    index[store.right] = np.where(ra >= 0, ra, -1)
    summed[store.left] = res["left_sum"]
    summed[store.right] = res["right_sum"]
    return {"index": index, "summed_r": summed, "n_blocks": [len(left), len(right)],
            "group_block": block, "kernel": facts}


def ensure_group_counterpart(store, cfg, *, participants=None, client, overwrite: bool = False,
                             show_progress: bool = True,
                             storage_options: dict | None = None) -> tuple[dict, list[str]]:
    """The store's group counterpart for the configured reference, computed when needed.

    Parameters
    ----------
    store : CohortStore
        Opened for writing.
    cfg : CFHSettings
        ``reference_subjects``, ``block``, ``split_every``, ``subject_batch``, ``backend``.
    participants : DataFrame or path, optional
        For a participants filter.
    client : distributed.Client
    overwrite : bool
        Recompute even when the stored counterpart matches.

    Returns
    -------
    (group, stale)
        ``group`` as :meth:`CohortStore.group_counterpart` returns it; ``stale``
        the subjects whose group-mode maps were computed with a previous
        counterpart and have been invalidated (they must be recomputed).
    """
    reference = resolve_reference(store, cfg.reference_subjects, participants,
                                  storage_options)
    n_ref = len(reference.subjects)
    if n_ref == 1:
        log.warning("%s: the reference set is one subject (%s): the group counterpart is "
                    "that subject's own maximum, and its CFH equals --counterpart subject",
                    OPTION, reference.subjects[0])
    fp = reference.fingerprint()
    current = store.group_counterpart()
    if current is not None and current.get("fingerprint") == fp and not overwrite:
        log.info("Group counterpart of %d reference subject(s) is up to date (fingerprint %s)",
                 n_ref, fp)
        return current, []
    stale = store.subjects("cfh")
    if current is not None and current.get("fingerprint") != fp:
        old = current.get("reference", {})
        log.warning("The reference set of the group counterpart changed (%s subject(s), "
                    "fingerprint %s -> %d subject(s), %s): recomputing the counterpart and "
                    "the group-mode CFH maps of %d subject(s)", old.get("n_subjects", "?"),
                    current.get("fingerprint"), n_ref, fp, len(stale))
    t0 = time.perf_counter()
    other = reference.source.group_counterpart() if reference.source is not store else None
    if other is not None and other.get("fingerprint") == fp:
        log.info("Using the group counterpart stored in %s (same reference, fingerprint %s)",
                 reference.source.url, fp)
        res = {"index": other["index"], "summed_r": other["summed_r"],
               "n_blocks": other.get("params", {}).get("n_blocks")}
    else:
        log.info("Group counterpart from %d reference subject(s) (%s), batches of %d, "
                 "block %d", n_ref, reference.spec["kind"], cfg.subject_batch,
                 group_block(cfg.block, reference.source.n_left, reference.source.n_right))
        res = _compute(store, reference, cfg, client)
    disp = counterpart_displacement(store.xyz, np.asarray(res["index"]))
    spec = {**reference.spec, "n_subjects": n_ref, "subjects": reference.subjects}
    attrs = {"fingerprint": fp, "reference": spec,
             "params": {"block": cfg.block, "split_every": cfg.split_every,
                        "subject_batch": cfg.subject_batch, "constant_rtol": CONSTANT_RTOL,
                        "n_blocks": res["n_blocks"], "group_block": res.get("group_block"),
                        **res.get("kernel", {})},
             "seconds": round(time.perf_counter() - t0, 3),
             "median_displacement_mm": float(np.nanmedian(disp)) if np.isfinite(disp).any()
             else None}
    if stale:
        store.invalidate("cfh", stale)
    store.write_group_counterpart(res["index"], res["summed_r"], attrs)
    store.append_history("cfh-counterpart", attrs)
    log.info("Group counterpart written (%.1f s): median distance to the mirror voxel %s mm",
             time.perf_counter() - t0, f"{attrs['median_displacement_mm']:.1f}"
             if attrs["median_displacement_mm"] is not None else "n/a")
    group = store.group_counterpart()
    assert group is not None
    return group, stale
