"""Distributed training through fairseq's own launcher, and a SIGKILL mid-epoch, on CPU."""

import os
import re
import signal
import socket
import subprocess
import time

import torch

from helpers import PLUGIN_DIR, combined_output, console_script, fairseq_env, parse_log_stats


def distill_args(data_bin, teacher, save_dir, max_update, *extra):
    return [
        str(data_bin), "--user-dir", str(PLUGIN_DIR), "--task", "translation_reconstruction_init",
        "--teacher-path", str(teacher), "--arch", "distilled_transformer_tiny",
        "--share-all-embeddings", "--embedding-compression", "4",
        "--criterion", "label_smoothed_cross_entropy_with_distillation", "--label-smoothing", "0.1",
        "--kd-alpha", "0.5", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1000",
        "--max-update", str(max_update), "--log-format", "simple", "--log-interval", "1", "--cpu",
        "--seed", "1", "--num-workers", "0", "--dropout", "0", "--save-dir", str(save_dir),
        *map(str, extra),
    ]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses(log):
    return [float(row["loss"]) for row in parse_log_stats(log)]


def test_two_process_gloo_run_matches_one_process_with_update_freq_2(data_bin, tiny_teacher, tmp_path):
    port = free_port()
    env = fairseq_env({"OMP_NUM_THREADS": "1"})
    processes = [
        subprocess.Popen(
            [str(console_script("train")), *distill_args(
                data_bin, tiny_teacher.best, tmp_path / "dist", 6, "--no-epoch-checkpoints",
                "--distributed-world-size", 2, "--distributed-rank", rank,
                "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                "--distributed-backend", "gloo", "--distributed-no-spawn",
                "--ddp-backend", "legacy_ddp")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs[0][-3000:]
    single = subprocess.run(
        [str(console_script("train")), *distill_args(
            data_bin, tiny_teacher.best, tmp_path / "single", 6, "--no-epoch-checkpoints",
            "--update-freq", 2)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    distributed_curve, single_curve = losses(outputs[0]), losses(combined_output(single))
    assert len(distributed_curve) == len(single_curve) == 6
    # fairseq logs losses to 3 decimals: the curves agree to the last logged digit ...
    assert all(abs(a - b) <= 1.5e-3 for a, b in zip(distributed_curve, single_curve)), (
        distributed_curve, single_curve)
    # ... and the weights after 6 updates to 1e-4 relative (only the summation order differs)
    distributed, single = (torch.load(tmp_path / run / "checkpoint_last.pt", weights_only=False)
                           ["model"] for run in ("dist", "single"))
    assert distributed.keys() == single.keys()
    errors = {key: ((distributed[key] - single[key]).norm() / single[key].norm().clamp_min(1e-12))
              .item() for key in single}
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_sigkill_mid_epoch_then_restart_resumes_without_reconstruction(data_bin, tiny_teacher, tmp_path):
    save_dir = tmp_path / "run"
    args = distill_args(data_bin, tiny_teacher.best, save_dir, 1000, "--save-interval-updates", 3,
                        "--no-epoch-checkpoints")
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(console_script("train")), *args], stdout=log,
                                   stderr=subprocess.STDOUT, env=fairseq_env(), start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        updates = [int(u) for u in re.findall(r"num_updates=(\d+)", log_path.read_text())]
        if updates and updates[-1] >= 8:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    for checkpoint in save_dir.glob("*.pt"):  # every checkpoint on disk is whole
        assert "model" in torch.load(checkpoint, weights_only=False)
    saved = torch.load(save_dir / "checkpoint_last.pt", weights_only=False)
    saved_updates = saved["optimizer_history"][-1]["num_updates"]
    assert saved_updates >= 6 and saved_updates % 3 == 0

    restart_args = args[:]
    restart_args[restart_args.index("--max-update") + 1] = str(saved_updates + 3)
    restart = subprocess.run([str(console_script("train")), *restart_args], capture_output=True,
                             text=True, env=fairseq_env(), timeout=600)
    log = combined_output(restart)
    assert restart.returncode == 0, log[-3000:]
    assert "reconstruction step" not in log
    assert re.search(rf"\(epoch \d+ @ {saved_updates} updates\)", log)
    updates = [int(row["num_updates"]) for row in parse_log_stats(log)]
    assert updates[0] == saved_updates + 1 and updates[-1] == saved_updates + 3
    # the resumed run continues the very same curve: its losses are an uninterrupted run's
    # (no dropout here, and fairseq restores the data iterator's position)
    uninterrupted_args = restart_args[:]
    uninterrupted_args[uninterrupted_args.index("--save-dir") + 1] = str(tmp_path / "straight")
    uninterrupted = subprocess.run([str(console_script("train")), *uninterrupted_args],
                                   capture_output=True, text=True, env=fairseq_env(), timeout=600)
    assert uninterrupted.returncode == 0, combined_output(uninterrupted)[-3000:]
    straight = {row["num_updates"]: row["loss"]
                for row in parse_log_stats(combined_output(uninterrupted))}
    resumed = {row["num_updates"]: row["loss"] for row in parse_log_stats(log)}
    assert resumed == {update: straight[update] for update in resumed}
