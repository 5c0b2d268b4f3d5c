"""Train with E3 / PREPO on a GPU cluster through verl 0.9.1: ``python -m e3.main_train [--config-name NAME] k=v ...``.

Configs live in ``e3/config/`` (shipped in the package): ``e3_trainer`` is verl's own ``ppo_trainer`` plus our
overlay (trainer ``e3``, the temperature-aware agent loop, the math reward, the ``e3:`` section); ``e3_r1_1.5b``,
``e3_r1_7b`` and the ablation rows ``e3_r1_1.5b_{grpo,ts,ts_an,dr}`` reproduce the paper's runs. Overrides are
hydra's (``e3.temperature.enable=false data.train_files=...``); ``--cfg job`` prints the composed config.

``scripts/train.sh`` calls ``python -m e3.main_train --config NAME_OR_FILE [--run-dir DIR] [--resume] k=v ...``:
``hydra_argv`` turns these flags into hydra's arguments and verl's keys (``e3.engines.verl.configs``: a verl overlay
file is composed from its folder with verl's and our configs on the search path). The composed config runs through
``e3.engines.verl.launch.run`` (the driver's preflight, then verl's ``run_ppo`` with our task runner for the ``e3``
trainer, verl's own for its other v1 trainers, ``trainer.device=cpu`` through the ``e3.engines.verl.cpu`` plugin).
A ``ConfigError`` is printed as one line (``error: ...``) and exits 2.
"""

from __future__ import annotations

import hydra

from e3.engines.verl.configs import CONFIG_DIR, ConfigError, config_args, run_dir_overrides
from e3.engines.verl.launch import run


def hydra_argv(argv: list[str]) -> list[str]:
    """``scripts/train.sh``'s flags as hydra's arguments: ``--config NAME`` (``e3/config/NAME.yaml``) or ``--config
    FILE`` (a verl overlay: ``--config-path``/``--config-name`` of the file, verl's and our configs on the search
    path; ``config_args``), ``--run-dir DIR`` and ``--resume`` (``run_dir_overrides``); every other argument is passed
    on as is."""
    source, run_dir, resume, rest = None, None, False, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config", "--run-dir"):
            if not args:
                raise ConfigError(f"{arg} needs a value")
            value = args.pop(0)
        elif arg.startswith(("--config=", "--run-dir=")):
            arg, value = arg.split("=", 1)
        elif arg == "--resume":
            resume = True
            continue
        else:
            rest.append(arg)
            continue
        if arg == "--config":
            source = value
        else:
            run_dir = value
    out = config_args(source, rest) if source is not None else []
    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir (the run to continue)")
    if run_dir is not None:
        if source is None:  # --config-name NAME given to hydra directly
            for i, arg in enumerate(rest):
                if arg in ("--config-name", "-cn") and i + 1 < len(rest):
                    source = rest[i + 1]
                elif arg.startswith("--config-name="):
                    source = arg.split("=", 1)[1]
        overrides = [o for o in out if o.startswith("hydra.searchpath=")]  # an overlay file's search path
        overrides += [a for a in rest if "=" in a and not a.startswith("-")]
        out += run_dir_overrides(source or "e3_trainer", run_dir, resume, overrides)
    return out + rest


@hydra.main(config_path=CONFIG_DIR, config_name="e3_trainer", version_base=None)
def main(config) -> None:
    try:
        run(config)
    except ConfigError as err:
        raise SystemExit(_refuse(err)) from None


def _refuse(err: Exception) -> int:
    import sys

    print(f"error: {err}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    import sys

    try:
        sys.argv = [sys.argv[0], *hydra_argv(sys.argv[1:])]
    except ConfigError as err:
        raise SystemExit(_refuse(err)) from None
    main()
