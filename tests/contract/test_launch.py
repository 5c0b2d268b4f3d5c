"""Contract: how a verl run is launched — ``scripts/train.sh`` and ``python -m e3.main_train`` up to the task runner.

- A driver without a GPU joins a Ray cluster that has GPUs (``+ray_kwargs.ray_init.address=...`` or
  ``RAY_ADDRESS``, as ``ray job submit`` sets it) and starts; a cluster without GPUs stops it with a plain message.
  The cluster is a real one (``ray start --head`` in its own temporary folder, a *logical* GPU), the driver runs
  ``e3.engines.verl.launch.run`` and verl's own ``run_ppo`` connects to it.

What these tests cannot see: real GPUs and a verl training run on them. The driver's task runner is a stand-in
that records the cluster it ran on (``E3TaskRunner`` would now build FSDP workers and vLLM on the GPUs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_SH = REPO / "scripts" / "train.sh"


def has_gpu() -> bool:
    return bool(shutil.which("nvidia-smi")) and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def env_without_gpu(**extra) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    env.pop("E3_GPU", None)  # scripts/_venv.sh decides by nvidia-smi, as in a fresh shell (never a reinstall)
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (this cluster's temporary folder): ours, nobody else's."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@contextmanager
def ray_head(num_gpus: int):
    """``ray start --head --block`` with ``num_gpus`` logical GPUs, in its own temporary folder and process group,
    without Ray's token authentication; stopped by killing the processes that name that folder (and the group),
    never with a machine-wide ``ray stop``."""
    temp = tempfile.mkdtemp(prefix="e3ray", dir="/tmp")  # short: Ray's unix sockets live under it
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
           f"--num-gpus={num_gpus}", "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=false",
           "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}"]
    env = env_without_gpu(RAY_AUTH_MODE="disabled")  # no token shared through ~/.ray with other clusters here
    env.pop("CUDA_VISIBLE_DEVICES")  # Ray refuses a logical GPU that CUDA_VISIBLE_DEVICES="" contradicts
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.time() + 180
        while not any("Ray runtime started" in ln for ln in lines):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("ray start failed:\n" + "".join(lines)[-3000:])
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:  # SIGKILL: on SIGTERM `ray start --block` drains its node for 30 s first
        for _ in range(20):
            pids = own_processes(temp)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


# The driver: e3.engines.verl.launch.run on the shipped GPU config, the task runner swapped for a stand-in that writes
# where it ran. Once with the address in the config, once (fresh connection) with RAY_ADDRESS only.
DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    import e3.engines.verl.runner as runner_module

    out, address = sys.argv[1], sys.argv[2]

    class StandInRunner:  # E3TaskRunner would build FSDP workers and vLLM on the cluster's GPUs now
        def run(self, config):
            import ray
            with open(out, "a") as fh:
                fh.write(json.dumps({"gpus": ray.cluster_resources().get("GPU", 0),
                                     "node": ray.get_runtime_context().get_node_id()}) + "\\n")

    runner_module.E3TaskRunner = StandInRunner
    from e3.engines.verl.configs import compose
    from e3.engines.verl.launch import run

    for how in ("config", "env"):
        if how == "config":
            config = compose("e3_r1_1.5b", [f"+ray_kwargs.ray_init.address={address}"])
        else:
            os.environ["RAY_ADDRESS"] = address
            config = compose("e3_r1_1.5b")
        try:
            run(config)
            print(f"DRIVER {how}: ran", flush=True)
        except SystemExit as e:
            print(f"DRIVER {how}: exit {e.code}", flush=True)
        ray.shutdown()
""")


def drive(address: str, tmp_path: Path) -> tuple[str, list[dict]]:
    out = tmp_path / "runner.jsonl"
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(out), address], cwd=tmp_path, env=env_without_gpu(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ran = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return proc.stdout, ran


@pytest.mark.slow
def test_a_driver_without_gpu_starts_on_a_cluster_with_gpus(tmp_path):
    if has_gpu():
        pytest.skip("a GPU is present here: this checks a driver without one")
    with ray_head(num_gpus=1) as address:
        stdout, ran = drive(address, tmp_path)
    assert "DRIVER config: ran" in stdout and "DRIVER env: ran" in stdout, stdout[-3000:]
    assert f"[e3] Ray cluster ({address}): 1 GPU(s)" in stdout
    assert [r["gpus"] for r in ran] == [1.0, 1.0]  # the task runner ran twice, on the cluster it was counted on


@pytest.mark.slow
def test_a_cluster_without_gpus_is_refused_before_the_task_runner(tmp_path):
    from e3.engines.verl.launch import NO_CLUSTER_GPU_MESSAGE

    if has_gpu():
        pytest.skip("a GPU is present here: this checks a driver without one")
    with ray_head(num_gpus=0) as address:
        stdout, ran = drive(address, tmp_path)
    message = NO_CLUSTER_GPU_MESSAGE.format(address=address)
    assert f"DRIVER config: exit {message}" in stdout and f"DRIVER env: exit {message}" in stdout, stdout[-3000:]
    assert ran == []  # nothing was scheduled on the cluster


def train_sh(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TRAIN_SH), *args], env=env_without_gpu(**env), capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_train_sh_lets_a_verl_config_join_a_cluster_without_a_local_gpu():
    """Without a GPU, ``scripts/train.sh`` refuses a GPU config — unless a Ray cluster is named (in the overrides or
    ``RAY_ADDRESS``). ``--cfg job`` makes hydra print the config it would run and stop: no Ray, no cluster needed."""
    if has_gpu():
        pytest.skip("a GPU is present here: this checks the refusal without one")
    refused = train_sh("--config", "e3_r1_1.5b", "--cfg", "job")
    assert refused.returncode == 2 and "needs NVIDIA GPUs" in refused.stderr
    assert "+ray_kwargs.ray_init.address=HEAD:PORT" in refused.stderr
    joined = train_sh("--config", "e3_r1_1.5b", "+ray_kwargs.ray_init.address=10.1.2.3:6379", "--cfg", "job")
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "address: 10.1.2.3:6379" in joined.stdout and "trainer_mode: e3" in joined.stdout
    from_env = train_sh("--config", "e3_r1_1.5b", "--cfg", "job", RAY_ADDRESS="10.1.2.3:6379")
    assert from_env.returncode == 0 and "trainer_mode: e3" in from_env.stdout, from_env.stderr[-3000:]


OVERLAY = """\
# my own E3 run on verl: verl's ppo_trainer, our overlay and the 1.5B recipe, one change
defaults:
  - ppo_trainer
  - recipe/overlay
  - recipe/r1_1.5b
  - _self_
trainer:
  experiment_name: my_overlay
  total_epochs: 1
"""


def test_a_verl_overlay_file_runs_verl_with_run_dir_and_resume_as_verl_keys(tmp_path):
    """``train.sh --config my_verl.yaml --run-dir DIR --resume`` goes to ``e3.main_train`` (not the local engine),
    composed from the file with verl's and our configs found; ``--cfg job`` prints what would run."""
    overlay = tmp_path / "my_verl.yaml"
    overlay.write_text(OVERLAY)
    run = tmp_path / "run"
    proc = subprocess.run(["bash", str(TRAIN_SH), "--config", "my_verl.yaml", "--run-dir", str(run), "--resume",
                           "--cfg", "job"], cwd=tmp_path, env=env_without_gpu(), capture_output=True, text=True,
                          timeout=300)  # a path relative to where the command is typed
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "experiment_name: my_overlay" in out and "total_epochs: 1" in out
    assert "trainer_mode: e3" in out and "adv_estimator: grpo" in out and "lr: 5.0e-06" in out  # overlay + recipe
    assert f"default_local_dir: {run}/checkpoints" in out and "resume_mode: auto" in out
    assert "no verl checkpoint" in out  # --resume of a fresh folder says it starts at step 0

    from e3.engines.verl.configs import compose

    cfg = compose(str(overlay))  # the library composes the same file
    assert cfg.trainer.experiment_name == "my_overlay" and cfg.data.train_batch_size == 64
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_manager_class == "e3.engines.verl.rollout.E3AgentLoopManager"


def test_a_local_overlay_file_still_runs_the_local_engine(tmp_path):
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("defaults: [grpo, _self_]\ntrainer: {total_steps: 3}\n")
    proc = train_sh("--config", str(overlay), "--print-config")  # the local engine's own flag
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "total_steps: 3" in proc.stdout and "actor_rollout_ref" not in proc.stdout


def test_run_dir_of_verl_cpu_tiny_is_its_run_folder(tmp_path):
    proc = train_sh("--config", "verl_cpu_tiny", "--run-dir", str(tmp_path / "r"), "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"run_dir: {tmp_path / 'r'}" in proc.stdout and "resume_mode: disable" in proc.stdout
    assert "default_local_dir: ${cpu_tiny.run_dir}/checkpoints" in proc.stdout


def test_run_dir_refusals_are_one_line(tmp_path):
    """The mapping itself (``e3.main_train.hydra_argv``, what ``python -m e3.main_train`` runs first)."""
    from e3.engines.verl.configs import ConfigError, engine_of
    from e3.main_train import hydra_argv

    run = tmp_path / "run"
    (run / "checkpoints" / "global_step_4").mkdir(parents=True)
    (run / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("4")
    with pytest.raises(ConfigError, match=r"already holds verl checkpoints; pass --resume"):
        hydra_argv(["--config", "verl_cpu_tiny", "--run-dir", str(run)])
    assert hydra_argv(["--config", "verl_cpu_tiny", "--run-dir", str(run), "--resume", "trainer.save_freq=2"]) == [
        "--config-name", "verl_cpu_tiny", f"cpu_tiny.run_dir={run}", "trainer.resume_mode=auto", "trainer.save_freq=2"]
    with pytest.raises(ConfigError, match=r"--resume needs --run-dir"):
        hydra_argv(["--config", "verl_cpu_tiny", "--resume"])
    with pytest.raises(ConfigError, match=r"--config nope: neither a YAML file nor a verl config"):
        hydra_argv(["--config", "nope"])
    bad = tmp_path / "on_shipped.yaml"
    bad.write_text("defaults: [e3_r1_1.5b, _self_]\n")
    assert engine_of(str(bad)) == "verl"
    with pytest.raises(ConfigError, match=r"defaults: \[ppo_trainer, recipe/overlay, recipe/r1_1.5b, _self_\]"):
        hydra_argv(["--config", str(bad)])
    flat = tmp_path / "flat.yaml"
    flat.write_text("actor_rollout_ref: {rollout: {n: 4}}\n")
    assert engine_of(str(flat)) == "verl"
    with pytest.raises(ConfigError, match=r"needs a defaults list"):
        hydra_argv(["--config", str(flat)])
