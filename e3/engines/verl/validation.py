"""E3's validation metrics on top of verl's: ``val/accuracy`` over every validation sample, all data sources."""

from __future__ import annotations

import numpy as np


def validation_metrics(config, data_sources, sample_uids, reward_extra_infos_dict) -> dict[str, float]:
    """Metrics E3 adds to verl's ``_val_metrics_update`` output (same names as the local engine's)."""
    out: dict[str, float] = {}
    values = reward_extra_infos_dict.get("acc") or reward_extra_infos_dict.get("reward") or []
    values = [float(v) for v in values if v is not None]
    if values:
        out["val/accuracy"] = float(np.mean(values))
    return out
