"""Exact integer budgets for a separable objective: max sum_i v_i(n_i) s.t. sum_i n_i = N, n_min <= n_i <= n_max.

The solver behind the ``informative`` policy (``e3.allocation.informative``) and its oracle. Both solvers here
work on the same integer table -- every row's first value and each of its increments rounded to a power-of-two
grid (``grid_table``), so that sums are exact and ties are exact -- and return the same allocation: among the
optimal ones, the last prompt gets the smallest budget, then the one before it, and so on.

- ``allocate_max_separable``: prompts with identical rows are grouped into classes. Rows whose increments are
  unimodal (non-decreasing, then non-increasing: convex, then concave; concave and convex rows included) are
  solved by a structured search: at most one prompt sits strictly inside the convex part of its row, every other
  is off (n_min) or on (past the convex part), and the prompts that are on share one threshold on their concave
  increments (marginal analysis: Gross 1956, Fox 1966; Ibaraki & Katoh, *Resource Allocation Problems*, 1988).
  Only the number of prompts on per class is searched, pruned by Lagrangian bounds (Everett 1963, Operations
  Research 11(3)) and evaluated exactly in integers. Any other table, or a search wider than ``SEARCH_LIMIT``
  candidates, goes to the reference below.
- ``allocate_max_separable_dp``: the reference, a multiple-choice-knapsack dynamic programme over the spare
  budget, O(B R (n_max - n_min + 1)).

Proof of exactness, the tie rule and the measured cost: docs/allocation.md ("The exact solver").
"""

from __future__ import annotations

import math

import numpy as np

from e3.allocation.policy import check_budget

GRID_BITS = 50
"""A sum of one table entry per prompt stays below 2^GRID_BITS grid units, plus half a unit per rounded increment:
exact in int64 and in float64."""
SEARCH_LIMIT = 20_000
"""The most candidate on-counts the structured search keeps before it hands the problem to the reference DP."""
MAX_PRICES = 48
"""The most Lagrange prices whose bounds prune the search (any price gives a valid bound)."""
_NEG = -(1 << 62)


def grid_table(values, size: int | None = None) -> np.ndarray:
    """The integer table both solvers maximise: int64 multiples of the grid 2^(e - GRID_BITS).

    ``e = ceil(log2(size * max_i (|v_i0| + sum_k |v_i,k+1 - v_ik|)))``, ``size`` the number of prompts (default:
    the rows), so that any sum of one entry per prompt is below 2^GRID_BITS units (plus the rounding). Each row keeps
    its first value and its increments, each rounded to the grid: rounding is monotone, so increments that were
    unimodal stay so.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be a (prompts, budgets) table, got shape {values.shape}")
    size = values.shape[0] if size is None else int(size)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    diffs = np.diff(values, axis=1)
    spread = float(np.max(np.abs(values[:, 0]) + np.abs(diffs).sum(axis=1)))
    if spread == 0.0:
        return np.zeros(values.shape, dtype=np.int64)
    shift = GRID_BITS - math.ceil(math.log2(size * spread))
    out = np.empty(values.shape, dtype=np.int64)
    out[:, 0] = np.rint(np.ldexp(values[:, 0], shift))
    out[:, 1:] = out[:, :1] + np.cumsum(np.rint(np.ldexp(diffs, shift)).astype(np.int64), axis=1)
    return out


def _check(values, total, n_min, n_max) -> tuple[np.ndarray, int, int, int]:
    total, n_min, n_max = int(total), int(n_min), int(n_max)
    values = np.asarray(values, dtype=np.float64)
    size, width = (values.shape[0] if values.ndim else 0), n_max - n_min + 1
    check_budget(size, total, n_min, n_max)
    if values.shape != (size, width) or not np.all(np.isfinite(values)):
        raise ValueError(f"values must be a finite (prompts, {width}) table for caps [{n_min}, {n_max}], "
                         f"got shape {values.shape}")
    return values, total, n_min, n_max


def allocate_max_separable_dp(values, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Reference: the same optimum and tie rule as ``allocate_max_separable`` by DP, O(B R (n_max - n_min + 1))."""
    values, total, n_min, n_max = _check(values, total, n_min, n_max)
    return n_min + _dp(grid_table(values), total - values.shape[0] * n_min)


def allocate_max_separable(values, total: int, n_min: int, n_max: int) -> np.ndarray:
    """Exact argmax of sum_i values[i, n_i - n_min] s.t. sum n_i = total, n_min <= n_i <= n_max.

    Among optimal allocations of the grid table (``grid_table``: ties are exact) the last prompt gets the smallest
    budget, then the one before it, and so on.
    """
    values, total, n_min, n_max = _check(values, total, n_min, n_max)
    table = grid_table(values)
    rows, inverse = _group_rows(table)
    return n_min + _solve(rows, inverse, total - values.shape[0] * n_min)


def allocate_grouped(rows, inverse, total: int, n_min: int, n_max: int) -> np.ndarray:
    """``allocate_max_separable(rows[inverse], ...)`` without building the full table (prompts share rows)."""
    rows = np.asarray(rows, dtype=np.float64)
    inverse = np.asarray(inverse, dtype=np.int64).ravel()
    total, n_min, n_max = int(total), int(n_min), int(n_max)
    check_budget(inverse.size, total, n_min, n_max)
    width = n_max - n_min + 1
    if rows.ndim != 2 or rows.shape[1] != width or not np.all(np.isfinite(rows)):
        raise ValueError(f"rows must be a finite (classes, {width}) table for caps [{n_min}, {n_max}], "
                         f"got shape {rows.shape}")
    if inverse.size and (inverse.min() < 0 or inverse.max() >= rows.shape[0]):
        raise ValueError("inverse must index rows")
    used = np.unique(inverse)
    if used.size < rows.shape[0]:  # the grid depends on the rows in use only
        rows, inverse = rows[used], np.searchsorted(used, inverse)
    table = grid_table(rows, size=inverse.size)
    merged, back = _group_rows(table)  # rows that differ in floats can coincide on the grid
    return n_min + _solve(merged, back[inverse], total - inverse.size * n_min)


def _group_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows, index of each row's class), classes in order of first appearance."""
    if table.shape[0] == 0:
        return table, np.zeros(0, dtype=np.int64)
    weights = np.random.default_rng(0x5EED).integers(1, 1 << 62, table.shape[1], dtype=np.int64) | 1
    with np.errstate(over="ignore"):
        keys = table @ weights  # wraps modulo 2^64: a hash; equality is checked below
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not np.array_equal(table[first[inverse]], table):  # a hash collision: group exactly
        _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    order = np.argsort(first, kind="stable")  # class ids in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return table[first[order]], rank[inverse]


def _solve(rows: np.ndarray, inverse: np.ndarray, spare: int) -> np.ndarray:
    """Budgets above n_min per prompt (int64) for the integer class table ``rows`` and prompt classes ``inverse``."""
    size, width = inverse.size, rows.shape[1]
    if spare == 0 or width == 1:
        return np.zeros(size, dtype=np.int64)
    if spare == size * (width - 1):
        return np.full(size, width - 1, dtype=np.int64)
    out = _structured(rows, inverse, spare)
    return _dp(rows[inverse], spare) if out is None else out


def _dp(table: np.ndarray, spare: int) -> np.ndarray:
    """Multiple-choice knapsack DP on the integer table; the first maximum (smallest budget) at every step."""
    size, width = table.shape
    if spare == 0 or width == 1:
        return np.zeros(size, dtype=np.int64)
    padded = np.full(width - 1 + spare + 1, _NEG, dtype=np.int64)
    best = padded[width - 1:]  # best[c]: top value of the prompts so far with c spare rollouts spent
    best[0] = 0
    # win[c, k] = best[c - k] (unreachable where c < k): a view, so it follows every update of best
    win = np.lib.stride_tricks.sliding_window_view(padded, width)[:, ::-1]
    choice = np.zeros((size, spare + 1), dtype=np.int64)
    for i in range(size):
        cand = win + table[i]
        choice[i] = np.argmax(cand, axis=1)  # first maximum: the smallest k among exact ties
        best[:] = np.take_along_axis(cand, choice[i][:, None], axis=1)[:, 0]
    k = np.empty(size, dtype=np.int64)
    c = spare
    for i in range(size - 1, -1, -1):
        k[i] = choice[i, c]
        c -= k[i]
    assert c == 0
    return k


class _Classes:
    """One row per class of identical prompts, unimodal increments: the pieces of the structured search."""

    def __init__(self, rows: np.ndarray, inverse: np.ndarray, spare: int):
        self.rows, self.inverse, self.spare = rows, inverse, spare
        self.count = np.bincount(inverse, minlength=rows.shape[0]).astype(np.int64)
        self.L = rows.shape[1] - 1
        self.h = rows - rows[:, :1]  # gain over n_min
        self.d = np.diff(rows, axis=1)
        self.pi = np.argmax(self.d, axis=1)  # first largest increment: convex on [0, pi], concave on [pi, L]
        self.on_gain = self.h[np.arange(rows.shape[0]), self.pi]
        self.concave = self.pi == 0  # always "on"
        self.pool_mask = np.arange(self.L)[None, :] >= self.pi[:, None]
        cls, step = np.nonzero(self.pool_mask)  # the concave increments: d[c, pi_c:], non-increasing
        vals = self.d[cls, step]
        order = np.argsort(-vals, kind="stable")
        self.pool_val, self.pool_cls = vals[order], cls[order]
        self.pool_len = self.L - self.pi
        ks = np.arange(rows.shape[1])[None, :]
        pc, px = np.nonzero((ks >= 1) & (ks < self.pi[:, None]))  # a partial prompt: strictly inside the convex part
        self.opt_cls = np.concatenate([[-1], pc]).astype(np.int64)  # option 0: no partial prompt
        self.opt_x = np.concatenate([[0], px]).astype(np.int64)
        self.opt_gain = np.concatenate([[0], self.h[pc, px]]).astype(np.int64)

    def unimodal(self) -> bool:
        if self.L < 2:
            return True
        dd = np.diff(self.d, axis=1)
        rising = np.arange(self.L - 1)[None, :] < self.pi[:, None]
        return bool(np.all(np.where(rising, dd >= 0, dd <= 0)))

    def values(self, on: np.ndarray, opts: np.ndarray) -> np.ndarray:
        """Exact value (less sum_c m_c g_c(0)) of every on-count row and partial option ``opts`` (_NEG: infeasible)."""
        out = np.full((on.shape[0], opts.size), _NEG, dtype=np.int64)
        rows_per = max(1, 4_000_000 // max(1, self.pool_val.size, opts.size))
        for lo in range(0, on.shape[0], rows_per):
            out[lo:lo + rows_per] = self._values(on[lo:lo + rows_per], opts)
        return out

    def _values(self, on: np.ndarray, opts: np.ndarray) -> np.ndarray:
        n, ox, oc = on.shape[0], self.opt_x[opts], self.opt_cls[opts]
        base = (on @ self.on_gain)[:, None] + self.opt_gain[opts][None, :]
        t = (self.spare - on @ self.pi)[:, None] - ox[None, :]  # rollouts left for the concave increments
        ok = (t >= 0) & (t <= (on @ self.pool_len)[:, None])
        part = oc >= 0
        ok[:, part] &= on[:, oc[part]] < self.count[oc[part]]
        if not ok.any():
            return np.full(t.shape, _NEG, dtype=np.int64)
        # Only a slice of the sorted pool decides: units above every threshold these rows can have are taken by
        # all of them, units below every such threshold by none (the t-th largest unit grows with the weights and
        # falls with t).
        used = t[ok]
        hi_v = self._unit(on.max(axis=0), max(1, int(used.min())))
        t_hi, low = int(used.max()), on.min(axis=0)
        lo_v = self._unit(low, t_hi) if t_hi <= int(low @ self.pool_len) else -np.inf
        i0 = int(np.searchsorted(-self.pool_val, -hi_v, side="left"))
        i1 = int(np.searchsorted(-self.pool_val, -lo_v, side="right")) if np.isfinite(lo_v) else self.pool_val.size
        head_units = np.bincount(self.pool_cls[:i0], minlength=self.pi.size)
        head_value = np.zeros(self.pi.size, dtype=np.int64)
        np.add.at(head_value, self.pool_cls[:i0], self.pool_val[:i0])
        need = t - (on @ head_units)[:, None]
        head = on @ head_value
        pv, pc = self.pool_val[i0:i1], self.pool_cls[i0:i1]
        if pv.size == 0:
            ok &= need == 0
            top = np.zeros_like(need)
        else:
            w = on[:, pc]
            cw = np.cumsum(w, axis=1)
            cv = np.cumsum(w * pv, axis=1)
            assert np.all((need[ok] >= 0) & (need[ok] <= np.broadcast_to(cw[:, -1:], need.shape)[ok]))
            nc = np.clip(need, 0, cw[:, -1:])
            stride = int(cw[:, -1].max()) + 1
            offset = np.arange(n, dtype=np.int64) * stride
            j = np.searchsorted((cw + offset[:, None]).ravel(), (nc + offset[:, None]).ravel(), side="left")
            j = j.reshape(nc.shape) - (np.arange(n) * pv.size)[:, None]  # first index with cw >= need
            r, prev = np.arange(n)[:, None], np.maximum(j - 1, 0)
            cw_prev = np.where(j > 0, cw[r, prev], 0)
            cv_prev = np.where(j > 0, cv[r, prev], 0)
            top = cv_prev + (nc - cw_prev) * pv[np.minimum(j, pv.size - 1)]
        return np.where(ok, base + head[:, None] + top, _NEG)

    def _unit(self, weights: np.ndarray, t: int) -> float:
        """The value of the t-th largest concave increment, each class's counted ``weights[c]`` times."""
        cw = np.cumsum(weights[self.pool_cls])
        return float(self.pool_val[min(int(np.searchsorted(cw, t, side="left")), cw.size - 1)])

    def allocation(self, on: np.ndarray, option: int) -> np.ndarray:
        """The allocation of one configuration: per class, the first on[c] prompts (batch order) on, the next one
        partial if the option says so, the rest off; ties on the concave threshold filled earliest prompt first."""
        inv, pi = self.inverse, self.pi
        order = np.argsort(inv, kind="stable")
        starts = np.cumsum(self.count) - self.count
        rank = np.empty(inv.size, dtype=np.int64)
        rank[order] = np.arange(inv.size) - starts[inv[order]]
        c_part, x = int(self.opt_cls[option]), int(self.opt_x[option])
        k = np.zeros(inv.size, dtype=np.int64)
        is_on = rank < on[inv]
        rest = self.spare - int(on @ pi) - x
        above = np.zeros(pi.size, dtype=np.int64)
        tied = np.zeros(pi.size, dtype=np.int64)
        if rest > 0:
            w = on[self.pool_cls]
            theta = self.pool_val[int(np.searchsorted(np.cumsum(w), rest, side="left"))]
            above = (self.pool_mask & (self.d > theta)).sum(axis=1)
            tied = (self.pool_mask & (self.d == theta)).sum(axis=1)
        k[is_on] = pi[inv[is_on]] + above[inv[is_on]]
        extra = rest - int(on @ above)
        idx = np.flatnonzero(is_on & (tied[inv] > 0))  # batch order
        room = tied[inv[idx]]
        k[idx] += np.clip(extra - (np.cumsum(room) - room), 0, room)
        if c_part >= 0:
            k[(inv == c_part) & (rank == on[c_part])] = x
        assert int(k.sum()) == self.spare
        return k


def _structured(rows: np.ndarray, inverse: np.ndarray, spare: int) -> np.ndarray | None:
    """The structured search (module docstring); None where it does not apply (the caller then runs the DP)."""
    cl = _Classes(rows, inverse, spare)
    if not cl.unimodal():
        return None
    m, S = cl.count, np.flatnonzero(~cl.concave)
    thetas, lam = _thetas(cl)
    # G[t, c] = max_{k >= pi_c} h_c(k) - theta_t k: an on prompt's best net gain at price theta (concave part)
    above = (cl.pool_mask[None, :, :] & (cl.d[None, :, :] > thetas[:, None, None])).sum(axis=2)
    kstar = cl.pi[None, :] + above
    hf = cl.h.astype(np.float64)
    G = hf[np.arange(m.size)[None, :], kstar] - thetas[:, None] * kstar
    # Q[t]: the best net gain of one partial prompt (h convex on [0, pi]: an end of [1, pi - 1])
    two = np.flatnonzero(cl.pi >= 2)
    Q = np.zeros(thetas.size)
    if two.size:
        p1 = cl.pi[two] - 1
        ends = np.maximum(hf[two, 1][None, :] - thetas[:, None], hf[two, p1][None, :] - thetas[:, None] * p1)
        Q = np.maximum(0.0, ends.max(axis=1))
    # upper bound on the value of on-counts a, for every theta: theta R + Q + sum_c a_c G_c(theta)
    bound0 = thetas * spare + Q + (G[:, cl.concave] * m[cl.concave]).sum(axis=1)
    GS = G[:, S]
    # incumbent: on-counts preferred at lam; the least decided class (and the next) over all their counts
    pref = m.copy()
    lam_row = int(np.argmin(np.abs(thetas - lam)))
    pref[S] = np.where(GS[lam_row] > 0, m[S], 0)
    trial = [pref[None, :]]
    by_doubt = S[np.argsort(np.abs(GS[lam_row]) * m[S], kind="stable")][:2]
    for c in by_doubt:
        block = np.repeat(pref[None, :], m[c] + 1, axis=0)
        block[:, c] = np.arange(m[c] + 1)
        trial.append(block)
    trial = np.concatenate(trial)
    hosts = np.flatnonzero((cl.opt_cls < 0) | np.isin(cl.opt_cls, by_doubt))  # no partial, or one of theirs
    incumbent = int(cl.values(trial, hosts).max())
    if incumbent == _NEG:
        return None
    # keep the on-counts whose bound reaches the incumbent (with a float margin; values are exact integers)
    top = bound0 + (np.maximum(GS, 0.0) * m[S]).sum(axis=1)
    margin = 1e-9 * (abs(incumbent) + float(np.abs(top).max())) + 1.0
    slack = top - (incumbent - margin)
    if np.any(slack < 0):
        return None
    lo, hi = np.zeros(S.size, dtype=np.int64), m[S].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where(GS < 0, np.floor(slack[:, None] / -GS), np.inf).min(axis=0)  # the margin covers rounding
        down = np.where(GS > 0, np.ceil(m[S][None, :] - slack[:, None] / GS), -np.inf).max(axis=0)
    hi = np.minimum(hi, np.where(np.isfinite(up), up, hi)).astype(np.int64)
    lo = np.maximum(lo, np.where(np.isfinite(down), down, lo)).astype(np.int64)
    if np.any(lo > hi):
        return None
    found = _candidates(lo, hi, GS, m[S], slack)
    if found is None:
        return None
    cands, spent = found
    # a partial prompt (class c, x rollouts) can only be part of an optimum if its net gain h_c(x) - theta x
    # keeps the bound above the incumbent at every price
    net = cl.opt_gain[None, :] - thetas[:, None] * cl.opt_x[None, :]
    opts = np.flatnonzero(np.all(net >= (Q - slack)[:, None], axis=0) | (cl.opt_cls < 0))
    # branch and bound: evaluate the candidates best bound first; stop where the bound falls below the best value
    bound = (top[None, :] - spent).min(axis=1)
    order = np.argsort(-bound, kind="stable")
    cands, bound = cands[order], bound[order]
    on = np.repeat(m[None, :], cands.shape[0], axis=0)
    on[:, S] = cands
    best, hits, chunk, i = incumbent, [], 16, 0
    while i < on.shape[0] and bound[i] >= best - margin:
        j = i + int(np.searchsorted(-bound[i:i + chunk], -(best - margin), side="right"))
        vals = cl.values(on[i:j], opts)
        top_val = int(vals.max())
        if top_val > best:
            best, hits = top_val, []
        if top_val == best:
            hits += [(i + r, int(opts[o])) for r, o in zip(*np.nonzero(vals == best))]
        i, chunk = j, chunk * 2
    if not hits:
        return None
    allocs = np.stack([cl.allocation(on[r], o) for r, o in hits])
    return allocs[np.lexsort(allocs.T)[0]]  # reverse-lexicographic minimum: last prompt smallest first


def _thetas(cl: _Classes) -> tuple[np.ndarray, float]:
    """Prices for the bounds: the concave envelope's increments ranked near the budget, and the LP price lam."""
    m, L, spare = cl.count, cl.L, cl.spare
    k = np.arange(1, L + 1)
    avg = cl.h[:, 1:] / k[None, :]
    tau = L - np.argmax((avg == avg.max(axis=1, keepdims=True))[:, ::-1], axis=1)  # last steepest chord
    chord = avg[np.arange(m.size), tau - 1]
    env = np.where(np.arange(L)[None, :] < tau[:, None], chord[:, None], cl.d.astype(np.float64))
    vals, w = env.ravel(), np.repeat(m, L)
    order = np.argsort(-vals, kind="stable")
    sv, cw = vals[order], np.cumsum(w[order])
    j = min(int(np.searchsorted(cw, spare, side="left")), sv.size - 1)
    lam = float(sv[j])
    lo = int(np.searchsorted(cw, spare - 4 * (L + 1), side="left"))
    hi = int(np.searchsorted(cw, spare + 4 * (L + 1), side="right"))
    near = np.unique(sv[max(lo - 1, 0):min(hi + 2, sv.size)])
    if near.size > MAX_PRICES:  # any price gives a valid bound: keep an even spread of them
        near = near[np.unique(np.linspace(0, near.size - 1, MAX_PRICES).round().astype(np.int64))]
    return np.unique(np.concatenate([near, [lam]])), lam


def _candidates(lo, hi, G, m, slack) -> tuple[np.ndarray, np.ndarray] | None:
    """On-count vectors in the box [lo, hi] whose bound loss sum_c loss_c <= slack at every price, with that loss
    (breadth-first over the classes, pruned at each); None if more than SEARCH_LIMIT survive a stage."""
    # loss of class c at count a and price t: what a costs against the class's best count at that price
    best = np.maximum(G, 0.0) * m
    floor = np.minimum(best - G * lo, best - G * hi)  # the least loss a class in [lo, hi] can have, per price
    fixed = lo == hi
    spent = (best[:, fixed] - G[:, fixed] * lo[fixed]).sum(axis=1)[None, :]
    rest = floor[:, ~fixed].sum(axis=1)
    frontier = np.zeros((1, 0), dtype=np.int64)
    for c in np.flatnonzero(~fixed):
        rest = rest - floor[:, c]
        counts = np.arange(lo[c], hi[c] + 1)
        loss = best[:, c][None, :] - counts[:, None] * G[:, c][None, :]  # (counts, prices)
        tot = spent[:, None, :] + loss[None, :, :]
        fi, ci = np.nonzero(np.all(tot + rest[None, None, :] <= slack[None, None, :], axis=2))
        if fi.size > SEARCH_LIMIT:
            return None
        frontier = np.concatenate([frontier[fi], counts[ci][:, None]], axis=1)
        spent = tot[fi, ci]
    out = np.repeat(lo[None, :], frontier.shape[0], axis=0)
    out[:, ~fixed] = frontier
    return out, spent
