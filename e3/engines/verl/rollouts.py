"""Per-rollout views of a verl TransferQueue batch: what the E3 controller needs, and the way back.

verl 0.9.1 stores one row per agent-loop output under the key ``{uid}_{session_id}_{output_index}``; a session is
one of the n_i rollouts of a prompt, and multi-output agent loops score only a session's last output (verl's
``compute_advantage_for_multi_trajectories`` does the same). Rows tagged ``is_padding`` are synthetic no-ops that
verl appends to make the batch divisible; they carry a copy of a real prompt's fields and must not reach the
difficulty tracker. Everything here is a pure function over tensors and lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Rollouts:
    """The final output of every real session, plus the map from batch rows to those sessions."""

    final_rows: np.ndarray  # batch row of each session's final output
    row_to_session: np.ndarray  # session position of each batch row; -1 for padding rows

    @property
    def size(self) -> int:
        return int(self.final_rows.size)


def split_key(key: str) -> tuple[str, str, int]:
    """``{uid}_{session}_{index}`` -> (uid, session, index); a clear error for any other shape."""
    parts = key.rsplit("_", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"unexpected TransferQueue key {key!r}: expected '{{uid}}_{{session_id}}_{{index}}'")
    return parts[0], parts[1], int(parts[2])


def final_sessions(keys: list[str], tags: list[dict] | None = None) -> Rollouts:
    """Group rows into sessions, keep each session's last output, and drop padding rows."""
    tags = tags if tags is not None else [{} for _ in keys]
    if len(tags) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(tags)} tags")
    best: dict[str, tuple[int, int]] = {}
    row_session: list[str | None] = []
    for row, (key, tag) in enumerate(zip(keys, tags)):
        if tag.get("is_padding", False):
            row_session.append(None)
            continue
        uid, session, index = split_key(key)
        name = f"{uid}_{session}"
        row_session.append(name)
        if name not in best or best[name][0] < index:
            best[name] = (index, row)
    names = list(best)
    position = {name: i for i, name in enumerate(names)}
    final_rows = np.array([best[name][1] for name in names], dtype=np.int64)
    row_to_session = np.array([-1 if s is None else position[s] for s in row_session], dtype=np.int64)
    return Rollouts(final_rows, row_to_session)


def row_sums(nested: torch.Tensor) -> np.ndarray:
    """Sum over each row of a jagged tensor (e.g. token-level scores -> sequence score)."""
    return np.array([float(t.sum()) for t in nested.unbind()], dtype=np.float64)


def row_lengths(mask: torch.Tensor) -> np.ndarray:
    """Number of valid (mask = 1) tokens in each row of a jagged response mask."""
    return np.array([float(m.sum()) for m in mask.unbind()], dtype=np.float64)


def row_means(nested: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Masked token mean of each row (NaN for a row without valid tokens)."""
    out = []
    for t, m in zip(nested.unbind(), mask.unbind()):
        m = m.to(torch.float64)
        n = float(m.sum())
        out.append(float((t.to(torch.float64) * m).sum()) / n if n > 0 else float("nan"))
    return np.array(out, dtype=np.float64)


def response_token_mean(values: torch.Tensor, mask: torch.Tensor, tags: list[dict] | None = None,
                        select=None) -> float:
    """Token mean of a jagged per-token field over the response tokens of the real rows (E3 Eq. 4's H_t).

    sum over rows r not tagged ``is_padding`` (and, with ``select``, one bool per row, only the rows it marks) and
    tokens t of values[r, t] * mask[r, t], divided by the number of such tokens; NaN when there is none (the
    scheduler then keeps tau and counts an invalid entropy).
    """
    rows = list(zip(values.unbind(), mask.unbind()))
    tags = tags if tags is not None else [{} for _ in rows]
    select = [True] * len(rows) if select is None else [bool(s) for s in select]
    if len(tags) != len(rows) or len(select) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(tags)} tags and {len(select)} selected flags")
    total, count = 0.0, 0.0
    for (v, m), tag, chosen in zip(rows, tags, select):
        if tag.get("is_padding", False) or not chosen:
            continue
        m = m.to(torch.float64)
        total += float((v.to(torch.float64) * m).sum())
        count += float(m.sum())
    return total / count if count > 0 else float("nan")


def broadcast_to_tokens(values, mask: torch.Tensor) -> torch.Tensor:
    """One value per row -> a jagged float32 tensor shaped like ``mask`` (value x mask on every token)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    rows = mask.unbind()
    if values.size != len(rows):
        raise ValueError(f"{values.size} values for {len(rows)} rows")
    return torch.nested.as_nested_tensor(
        [m.to(torch.float32) * float(v) for v, m in zip(values.tolist(), rows)], layout=torch.jagged)


def scatter_to_rows(per_session, rollouts: Rollouts) -> np.ndarray:
    """Per-session values -> per-row values (padding rows get 0)."""
    vals = np.asarray(per_session, dtype=np.float64).ravel()
    out = np.zeros(rollouts.row_to_session.size, dtype=np.float64)
    real = rollouts.row_to_session >= 0
    out[real] = vals[rollouts.row_to_session[real]]
    return out
