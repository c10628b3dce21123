"""The scoring kernel: mask what a user has seen and pick the top N, a batch of users at a time.

Memory is bounded by ``batch × items``; history stays sparse (CSR) and is applied by index.

Two layers:

* ``mask_seen`` / ``top_n``: the generic pieces behind ``Recommender.recommend`` (any model, ties
  broken by lower item index). ``top_n`` selects wide rows with ``block_top_n``: block maxima,
  a threshold from them, and a sort of the few scores above it — exact, and measured ~2x
  faster than ``torch.topk`` and ~3x faster than ``np.argpartition`` on whole rows at 27K items,
  N=100 (``benchmarks/topn_benchmark.py`` prints the comparison).
* ``TopNScorer``: the hot path the top-N pipeline uses. For factor models (``scores = U @ Vᵀ``)
  it fuses, per batch of users, one float32 GEMM into a preallocated buffer (torch, so the
  thread count is ours to set), seen-item masking by flat index into that buffer (no dense
  history), and ``top_n`` on the buffer. Other models go through ``model.recommend``.

With new (cold) items (``nightly_topn.cold_start``), ``TopNScorer`` takes their neighbour
weights ``W`` (``n_warm × n_cold``): a new item's score is ``warm_scores @ W``, taken from the
unmasked warm scores; the cold block is masked by the history's columns ``n_warm + j`` and its
top-N merged with the warm top-N, so lists rank warm and cold items in one index space.

With candidate rules (``nightly_topn.rules.CandidateRules``), what they forbid is masked in the
same buffers after the history, before the cut, so the lists stay full. With diversity on
(``nightly_topn.diversity``), the cut keeps ``k`` > N candidates, which MMR re-ranks into N.

With ``candidates="ann"`` (or ``"auto"`` on a catalogue of ``ANN_MIN_ITEMS`` items or more) a factor
model's candidates come from ``nightly_topn.ann`` (faiss MIPS over the item factors, exact
re-scoring, seen and rule-forbidden items dropped, ``ANN_BATCH`` users per search); users left
with fewer than ``k`` candidates are searched again deeper, then scored exactly. New items are
scored from the warm columns their weights use only, and merged as above; MMR gets its ``k``.
"""
from __future__ import annotations

import logging
import os
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

#: Items per block in ``block_top_n``: ~``items / block`` maxima to select from, ~``n × block``
#: candidates to gather.
DEFAULT_BLOCK = 32
#: Users per GEMM in ``TopNScorer`` (buffer = batch × items float32: 128 × 27K = 14 MB): the
#: benchmark's batch sweep measured 128 fastest (64: -14%, 256: -15%, 512: -36% users/s).
DEFAULT_BATCH = 128
#: Candidate methods of ``TopNScorer`` (the ``candidates`` run knob).
CANDIDATE_METHODS = ("exact", "ann", "auto")
#: ``candidates="auto"`` uses ANN from this catalogue size on. Measured with
#: ``benchmarks/topn_large_catalogue.py --crossover 20000,50000,100000,200000`` (ALS fitted on
#: generated data, 64 factors, N=100, 10K users, kernel users/s exact vs ANN, 2 shared cores):
#: 20K items 18.4K vs 3.6K, 50K 7.2K vs 4.5K, 100K 3.8K vs 3.7K (parity), 200K 1.8K vs 4.7K. ANN
#: costs a near-constant ~4K users/s while exact falls as 1/items: it pays past ~100K items, so
#: 150K leaves room for the index build and the (small) recall loss.
ANN_MIN_ITEMS = 150_000
#: Users per ANN search call (faiss spreads one call's queries over its threads).
ANN_BATCH = 1024
#: Floats of one exact-scoring buffer when ANN is on (only users it leaves short use it): at 2M
#: items, 16 users (128 MB) instead of ``DEFAULT_BATCH`` users (1 GB).
ANN_EXACT_FLOATS = 1 << 25


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> None:
    """Set ``scores[r, i] = -inf`` for every item ``i`` in row ``r`` of ``seen`` (in place)."""
    if seen.nnz:
        rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf


def top_n(scores: np.ndarray, n: int, block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``n`` best columns per row, best first (ties: lower index first).

    Masked entries (``-inf``) are never picked: a row with fewer than ``n`` finite scores is
    padded with index -1 / score ``-inf`` so callers can drop them. Wide rows (more than ``n``
    blocks of ``block`` columns) go through ``block_top_n``, which reads each score about once;
    narrow ones are partitioned whole. Both give exactly the same answer.
    """
    rows, cols = scores.shape
    n = min(n, cols)
    if n and rows and cols // block > n:
        return block_top_n(scores, n, block)
    if n < cols:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(cols), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1) if vals.size else part
    idx = np.take_along_axis(part, order, axis=1).astype(np.int32)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    if n and n < cols:
        # argpartition keeps any of the items tied at the cut; those rows are redone by a stable sort.
        cut = vals[:, -1:]
        tied = np.flatnonzero(np.isfinite(cut[:, 0]) & ((scores == cut).sum(axis=1) > (vals == cut).sum(axis=1)))
        if len(tied):
            best = np.argsort(-scores[tied], axis=1, kind="stable")[:, :n]
            idx[tied] = best
            vals[tied] = np.take_along_axis(scores[tied], best, axis=1)
    idx[~np.isfinite(vals)] = -1
    return idx, vals


def block_top_n(scores: np.ndarray, n: int, block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``top_n`` of a wide 2-D score array by thresholding on block maxima.

    Split each row into blocks of ``block`` columns and take each block's max (one pass over
    the scores, done by torch because NumPy reduces short inner axes ~9x slower). The ``n``-th
    largest block max ``t`` is a lower bound of the row's ``n``-th best score (``n`` blocks each
    hold an item ≥ ``t``), so every top-``n`` item is ≥ ``t`` and lies in a block whose max is
    ≥ ``t``. Only those blocks (about ``n`` of ``cols / block``) are gathered, only their items
    ≥ ``t`` (typically ~``n``) are kept, and those few are sorted per row. Memory is O(rows ×
    n × block) beside the input; no per-row Python.
    """
    import torch
    from numpy.lib.stride_tricks import as_strided

    if scores.dtype not in (np.float32, np.float64) or scores.strides[1] != scores.itemsize:
        scores = np.ascontiguousarray(scores, dtype=np.float32)
    rows, cols = scores.shape
    whole = cols // block
    head = as_strided(scores, (rows, whole, block), (scores.strides[0], block * scores.itemsize, scores.itemsize))
    has_tail = whole * block < cols
    maxima = np.empty((rows, whole + has_tail), dtype=scores.dtype)
    maxima[:, :whole] = torch.from_numpy(head).amax(dim=2).numpy()
    if has_tail:
        maxima[:, whole] = scores[:, whole * block:].max(axis=1)
    blocks = maxima.shape[1]
    # Clamped to the lowest finite value: masked (-inf) items are never candidates.
    threshold = np.maximum(np.partition(maxima, blocks - n, axis=1)[:, blocks - n], np.finfo(scores.dtype).min)
    row, blk = np.nonzero(maxima >= threshold[:, None])
    if has_tail:
        in_head = blk < whole
        tail = np.full((rows, block), -np.inf, dtype=scores.dtype)
        tail[:, : cols - whole * block] = scores[:, whole * block:]
        candidates = np.empty((len(row), block), dtype=scores.dtype)
        candidates[in_head] = head[row[in_head], blk[in_head]]
        candidates[~in_head] = tail[row[~in_head]]
    else:
        candidates = head[row, blk]
    k, j = np.nonzero(candidates >= threshold[row, None])
    row, item, value = row[k], blk[k] * block + j, candidates[k, j]
    # Ragged (row, item, score) triples in row-major, item-ascending order -> one padded row each,
    # then a stable sort of -score: best first, ties by lower item index, padding last.
    counts = np.bincount(row, minlength=rows)
    width = max(n, int(counts.max()))
    slot = np.arange(len(row)) - (np.cumsum(counts) - counts)[row]
    negated = np.full((rows, width), np.inf, dtype=scores.dtype)
    negated[row, slot] = -value
    ids = np.full((rows, width), -1, dtype=np.int32)
    ids[row, slot] = item
    order = np.argsort(negated, axis=1, kind="stable")[:, :n]
    values = -np.take_along_axis(negated, order, axis=1)
    return np.take_along_axis(ids, order, axis=1), values.astype(np.float32, copy=False)


# -- threads -----------------------------------------------------------------------------------
def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS tells us)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(n_threads: int | None = None) -> int:
    """Give torch *and* the BLAS under NumPy/SciPy the same ``n_threads`` (default: all cores).

    Call once per worker process; with ``k`` worker processes on ``c`` cores use ``c // k`` so the
    workers don't oversubscribe the machine between them.
    """
    n = max(1, int(n_threads or available_cores()))
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)  # OpenBLAS/MKL/OpenMP pools already loaded (NumPy, SciPy, implicit)
    except Exception:  # pragma: no cover - threadpoolctl is optional
        log.debug("threadpoolctl unavailable; BLAS thread count left as is")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)  # for pools created later in this process
    return n


# -- the fast kernel ---------------------------------------------------------------------------
def _factors(model) -> tuple[np.ndarray, np.ndarray] | None:
    """``(user_factors, item_factors)`` if ``model`` may score as ``user_factors[u] @ item_factors.T``:
    2-D arrays of one width make a *candidate* that ``TopNScorer`` verifies against
    ``model.score`` before trusting (so a model that e.g. folds in history keeps working)."""
    user_f, item_f = getattr(model, "user_factors", None), getattr(model, "item_factors", None)
    if isinstance(user_f, np.ndarray) and isinstance(item_f, np.ndarray) and user_f.ndim == item_f.ndim == 2 \
            and user_f.shape[1] == item_f.shape[1]:
        return user_f, item_f
    return None


class TopNScorer:
    """Top-``n`` unseen items for batches of users of one model, with the ``recommend`` contract.

    For factor models: preallocated ``batch × items`` float32 buffer, GEMM into it, mask seen
    items by flat index, ``top_n``. Peak memory = ``parallel`` buffers + O(batch × n),
    whatever the number of users. Anything else falls back to ``model.recommend`` batch by batch.
    The first batch is checked against ``model.score`` before the fused path is trusted.
    """

    def __init__(self, model, n: int, *, batch_size: int = DEFAULT_BATCH, block: int = DEFAULT_BLOCK,
                 verify: bool = True, parallel: int = 1, cold_weights: sp.spmatrix | None = None, rules=None,
                 diversity: tuple | None = None, candidates: str = "exact", index_factory=None):
        import torch

        if candidates not in CANDIDATE_METHODS:
            raise ValueError(f"candidates={candidates!r}: expected one of {CANDIDATE_METHODS}")

        self.model, self.n, self.batch_size, self.block = model, int(n), int(batch_size), int(block)
        self.rules = rules  # CandidateRules over warm + new items, or None
        # MMR: (diversity.CategorySimilarity of warm + new items, strength λ); the kernel keeps k candidates
        self.diversity = diversity if diversity is not None and diversity[1] > 0 else None
        self._cold = None
        self.n_warm = getattr(model, "n_items", 0)
        if cold_weights is not None and cold_weights.shape[1]:
            if cold_weights.shape[0] != self.n_warm:
                raise ValueError(f"new-item weights have {cold_weights.shape[0]} warm rows, the model scores "
                                 f"{self.n_warm} items")
            # Only the warm columns some new item uses are gathered per batch: W restricted to them.
            by_cold = sp.csr_matrix(cold_weights.T, dtype=np.float32)
            self._cold_cols, local = np.unique(by_cold.indices, return_inverse=True)
            self._cold = sp.csr_matrix((by_cold.data, local.reshape(-1), by_cold.indptr),
                                       shape=(by_cold.shape[0], len(self._cold_cols)))
        self.n_cold = 0 if self._cold is None else self._cold.shape[0]
        self.k = self.n
        if self.diversity is not None:
            from nightly_topn.diversity import candidates

            self.k = candidates(self.n, self.n_warm + self.n_cold)
        factors = _factors(model)
        self.fused = factors is not None
        self._verified = not verify
        # ``parallel`` batches in flight at once, one Python thread each (torch ops release the
        # GIL). With torch at 1 intra-op thread this uses ``parallel`` cores with no barrier
        # between them, which degrades far less than intra-op threads on a busy machine.
        self.parallel = max(1, int(parallel))
        if self.fused:
            user_f, item_f = factors
            self.user_factors = torch.from_numpy(np.ascontiguousarray(user_f, dtype=np.float32))
            self.item_factors_t = torch.from_numpy(np.ascontiguousarray(item_f, dtype=np.float32)).t()
            self.n_items = item_f.shape[0]
            self.ann = self._ann_index(candidates, index_factory)
            self._buffer_rows = self.batch_size if self.ann is None else \
                max(1, min(self.batch_size, ANN_EXACT_FLOATS // max(self.n_items, 1)))
            self._buffers = queue.SimpleQueue()  # one batch × items float32 buffer per thread in flight
            if self.ann is None:  # with ANN, created when a user needs exact scoring
                for _ in range(self.parallel):
                    self._buffers.put(torch.empty((self.batch_size, self.n_items), dtype=torch.float32))
            self._pool = ThreadPoolExecutor(self.parallel, "topn-score") if self.parallel > 1 else None
        else:
            self.ann = None
            if candidates == "ann":
                log.info("%s has no item factors: candidates='ann' scores it exactly", type(model).__name__)
        #: Users the ANN path handed back to exact scoring (for the logs and the benchmark).
        self.exact_fallbacks = 0

    @property
    def method(self) -> str:
        """The candidate method in use: ``ann`` or ``exact``."""
        return "exact" if self.ann is None else "ann"

    def describe(self) -> dict:
        """What ran, for the job's manifest: method, and for ANN the index's calibration."""
        return self.ann.describe() if self.ann is not None else {"method": "exact"}

    def _ann_index(self, candidates: str, index_factory):
        """The ``ann.ItemIndex`` this scorer searches, or None for exact scoring."""
        from nightly_topn import ann

        if candidates == "exact" or (candidates == "auto" and self.n_items < ANN_MIN_ITEMS):
            return None
        if self.n_items <= self.k:  # every item is a candidate anyway
            return None
        if candidates == "auto" and not ann.available():
            log.warning("candidates='auto': %d items, but faiss is not installed (the 'ann' extra): exact "
                        "scoring", self.n_items)
            return None
        ann.require_faiss()  # candidates='ann' without faiss: one line
        users = self.user_factors.numpy()
        known = np.asarray(getattr(self.model, "known", np.ones(len(users), bool)), dtype=bool)
        if known.shape == (len(users),) and known.any():
            users = users[known]
        factory = index_factory or (lambda item_f, k, user_f, threads: ann.ItemIndex(item_f, k, users=user_f,
                                                                                     threads=threads))
        return factory(self.item_factors_t.numpy().T, self.k, users, self.parallel)

    def recommend(self, users: np.ndarray, history: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Like ``model.recommend(users, history, n)`` (seen filtered), any number of users."""
        idx, vals = self._candidates(np.asarray(users), history)
        return (idx, vals) if self.diversity is None else self._diversify(idx, vals)

    def _candidates(self, users: np.ndarray, history: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` unmasked items per user (``k`` = n, or MMR's candidate count)."""
        idx = np.empty((len(users), self.k), dtype=np.int32)
        vals = np.empty((len(users), self.k), dtype=np.float32)
        widths = []
        if self.fused and len(users):
            # Learned user factors only for users the model was trained on; others (fold-in from
            # history, if the model does that) go through the model's own recommend.
            trained = np.asarray(self.model.has_user(users), dtype=bool)
            if not trained.all():
                rest = np.flatnonzero(~trained)
                i, v = self._generic(users[rest], history[rest])
                idx[rest, : i.shape[1]], vals[rest, : i.shape[1]] = i, v
                widths.append(i.shape[1])
                if trained.any():
                    keep = np.flatnonzero(trained)
                    i, v = self._candidates(users[keep], history[keep])
                    idx[keep, : i.shape[1]], vals[keep, : i.shape[1]] = i, v
                    widths.append(i.shape[1])
                width = min(widths)
                return (idx[:, :width].copy(), vals[:, :width].copy()) if width < self.k else (idx, vals)
        step = self.batch_size if not self.fused or self.ann is None else ANN_BATCH
        bounds = [(lo, min(lo + step, len(users))) for lo in range(0, len(users), step)]
        if bounds and self.fused and not self._verified:
            self._verify(users[: bounds[0][1]], history[: bounds[0][1]])

        def run(bound):
            lo, hi = bound
            i, v = self._batch(users[lo:hi], history[lo:hi])
            idx[lo:hi, : i.shape[1]], vals[lo:hi, : i.shape[1]] = i, v
            widths.append(i.shape[1])

        if self.fused and self.ann is None and self._pool is not None and len(bounds) > 1:
            list(self._pool.map(run, bounds))  # re-raises the first error
        else:
            for bound in bounds:
                run(bound)
        width = min(widths) if widths else self.k
        if width < self.k:  # catalog smaller than k
            idx, vals = idx[:, :width].copy(), vals[:, :width].copy()
        return idx, vals

    #: Users per MMR call: its N steps are small array operations, which hold the GIL for most of
    #: their time at 128 users (two threads ran slower than one); at thousands they release it.
    MMR_ROWS = 2048

    def _diversify(self, idx: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MMR of the ``k`` candidates down to ``n``, in blocks of ``MMR_ROWS`` users, ``parallel`` at once."""
        from nightly_topn.diversity import mmr

        similarity, strength = self.diversity
        rows = max(1, min(self.MMR_ROWS, -(-len(idx) // self.parallel)))
        blocks = [(lo, min(lo + rows, len(idx))) for lo in range(0, len(idx), rows)]
        width = min(self.n, idx.shape[1])
        out_idx = np.full((len(idx), width), -1, dtype=np.int32)
        out_val = np.full((len(idx), width), -np.inf, dtype=np.float32)

        def run(block):
            lo, hi = block
            out_idx[lo:hi], out_val[lo:hi] = mmr(idx[lo:hi], vals[lo:hi], similarity, self.n, strength)

        if self.parallel > 1 and len(blocks) > 1:
            with ThreadPoolExecutor(self.parallel, "topn-mmr") as pool:
                list(pool.map(run, blocks))
        else:
            for block in blocks:
                run(block)
        return out_idx, out_val

    def _generic(self, users, history):
        """Any model: its own ``recommend``; with new items, ``model.score`` unmasked, the cold block
        from it, then mask and merge as in the fused path."""
        if self._cold is None and self.rules is None:
            return self.model.recommend(users, history, self.k)
        from nightly_topn.models.base import align_history

        warm = align_history(history, self.n_warm)
        scores = np.ascontiguousarray(self.model.score(users, warm), dtype=np.float32)
        cold = self._cold_scores(scores) if self._cold is not None else None
        mask_seen(scores, warm)
        if self.rules is not None:
            self.rules.mask(scores, users)
        top = top_n(scores, self.k, self.block)
        return top if cold is None else self._merge(top, cold, history, users)

    def _cold_scores(self, warm_scores: np.ndarray) -> np.ndarray:
        """``warm_scores @ W`` (``batch × n_cold``) from the unmasked scores: gather the used warm
        columns (transposed, one copy of ``used × batch``), one sparse product."""
        return self._cold_from_used(warm_scores.T[self._cold_cols])

    def _cold_from_used(self, used: np.ndarray) -> np.ndarray:
        """The cold block from ``used``: the unmasked warm scores of ``_cold_cols`` (``used × batch``)."""
        return np.ascontiguousarray((self._cold @ used).T, dtype=np.float32)

    def _merge(self, warm_top, cold: np.ndarray, history: sp.csr_matrix, users: np.ndarray):
        """Top-N of warm ∪ cold from the warm top-N and the cold scores (cold seen items and what
        the rules forbid masked): exact, since the best N of a union are among each part's best N.
        Ties: warm first (lower index)."""
        if history.shape[1] > self.n_warm:
            mask_seen(cold, history[:, self.n_warm:])
        if self.rules is not None:
            self.rules.mask(cold, users, self.n_warm)
        cold_idx, cold_vals = top_n(cold, self.k, self.block)
        idx = np.hstack([warm_top[0], np.where(cold_idx >= 0, cold_idx + self.n_warm, -1).astype(np.int32)])
        vals = np.hstack([warm_top[1], cold_vals])
        order = np.argsort(-vals, axis=1, kind="stable")[:, : self.k]
        return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)

    def _batch(self, users, history):
        if not self.fused:
            return self._generic(users, history)
        if self.ann is not None:
            return self._ann_batch(users, history)
        return self._exact_batch(users, history)

    def _ann_batch(self, users, history):
        """ANN candidates, exactly re-scored (``nightly_topn.ann``); short users deeper, then exactly."""
        rows = np.minimum(users, len(self.user_factors) - 1)
        queries = self.user_factors.numpy()[rows]
        forbid = None
        if self.rules is not None:
            forbid = lambda active, ids: self.rules.forbids(users[active], ids)  # noqa: E731
        from nightly_topn.ann import MARGIN, SEEN_CAP, SEEN_DEPTH

        # by seen items: up to SEEN_DEPTH at the calibrated nprobe, up to SEEN_CAP at the deep one
        # (calibrated that deep), more: exact scoring below
        seen = np.diff(history.indptr)
        idx = np.full((len(users), self.k), -1, dtype=np.int32)
        vals = np.full((len(users), self.k), -np.inf, dtype=np.float32)
        full = np.zeros(len(users), dtype=bool)
        light = seen <= SEEN_DEPTH
        for rows, extra, nprobe in ((np.flatnonzero(light), SEEN_DEPTH + MARGIN, self.ann.nprobe),
                                    (np.flatnonzero(~light & (seen <= SEEN_CAP)), SEEN_CAP + MARGIN,
                                     self.ann.deep_nprobe)):
            if not len(rows):
                continue
            part_forbid = None if forbid is None else (lambda active, ids, rows=rows: forbid(rows[active], ids))
            idx[rows], vals[rows], full[rows] = self.ann.search(queries[rows], history[rows], self.k,
                                                                forbid=part_forbid, extra=extra, nprobe=nprobe)
        short = np.flatnonzero(~full & (seen <= SEEN_CAP))
        if len(short):  # seen/forbidden items ate a shard's fetched depth: once more, deeper
            sub_forbid = None if forbid is None else (lambda active, ids: forbid(short[active], ids))
            i, v, f = self.ann.search(queries[short], history[short], self.k, forbid=sub_forbid,
                                      extra=self.k + SEEN_CAP + MARGIN, nprobe=self.ann.deep_nprobe)
            idx[short], vals[short], full[short] = i, v, f
        short = np.flatnonzero(~full)
        if self._cold is not None:
            import torch

            with torch.no_grad():
                used = torch.mm(self.item_factors_t.t()[torch.from_numpy(self._cold_cols.astype(np.int64))],
                                torch.from_numpy(queries).t()).numpy()
            idx, vals = self._merge((idx, vals), self._cold_from_used(used), history, users)
        if len(short):
            self.exact_fallbacks += len(short)
            for lo in range(0, len(short), self._buffer_rows):
                part = short[lo:lo + self._buffer_rows]
                i, v = self._exact_batch(users[part], history[part])
                idx[part], vals[part] = i, v
        return idx, vals

    def _exact_batch(self, users, history):
        import torch

        b = len(users)
        try:
            buffer = self._buffers.get_nowait()
        except queue.Empty:  # ANN on: the first user it leaves short
            buffer = torch.empty((self._buffer_rows, self.n_items), dtype=torch.float32)
        try:
            out = buffer[:b]
            with torch.no_grad():
                rows = torch.from_numpy(np.minimum(users, len(self.user_factors) - 1).astype(np.int64, copy=False))
                torch.mm(self.user_factors.index_select(0, rows), self.item_factors_t, out=out)
                cold = self._cold_scores(out.numpy()) if self._cold is not None else None  # before the mask
                if history.nnz:
                    counts = np.diff(history.indptr)
                    flat = np.repeat(np.arange(b, dtype=np.int64) * self.n_items, counts) + history.indices
                    if history.shape[1] > self.n_items:  # history may know items the model does not
                        flat = flat[history.indices < self.n_items]
                    out.numpy().reshape(-1)[flat] = -np.inf  # a view: masks the buffer in place
                if self.rules is not None:
                    self.rules.mask(out.numpy(), users)
            top = top_n(out.numpy(), self.k, self.block)
            return top if cold is None else self._merge(top, cold, history, users)
        finally:
            self._buffers.put(buffer)

    def _verify(self, users, history) -> None:
        """Check on a few users that ``U[u] @ Vᵀ`` reproduces ``model.score``; else use the model."""
        sample = users[: min(len(users), 32)]
        from nightly_topn.models.base import align_history

        rows = align_history(history[: len(sample)], self.n_items)  # new items' columns: not the model's
        expected = np.asarray(self.model.score(sample, rows), dtype=np.float32)
        mine = self.user_factors.numpy()[np.minimum(sample, len(self.user_factors) - 1)] @ self.item_factors_t.numpy()
        self._verified = True
        if expected.shape != mine.shape or not np.allclose(expected, mine, rtol=1e-4, atol=1e-5):
            log.warning("%s: factor product does not reproduce model.score; using model.recommend",
                        type(self.model).__name__)
            self.fused = False
            self._buffers = self.ann = None
