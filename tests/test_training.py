import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import jax
import numpy as np
import pytest

from pcdc_jax import config, training
from pcdc_jax.codec.training import random_levels
from tests.conftest import ROOT, SAMPLES, free_port, sample_image, subprocess_env


def _batch(y=100, x=100):
    return jax.numpy.asarray(sample_image()[y:y + 64, x:x + 128].astype(np.float32) / 255).reshape(2, 64, 64, 3)


def test_codec_loss_falls_on_a_fixed_batch():
    cfg = config.tiny().override(["train.learning_rate=0.003", "train.lr_warmup_steps=1",
                                  "train.diffusion_weight=0"])
    state = training.init_state(cfg, jax.random.PRNGKey(0))
    assert set(state.params) == {"codec"}
    step = training.jit_train_step(cfg)
    x = _batch()
    losses = []
    for i in range(30):
        state, m = step(state, x, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_every_level_is_sampled():
    lv = random_levels(jax.random.PRNGKey(0), 4, 8, 8, 5)
    assert set(np.unique(lv)) == set(range(5))


def test_joint_loss_schedule_and_gradients():
    """Before diffusion_start_step the diffusion loss has weight 0 (no gradient anywhere); from
    it on, it trains the U-Net and its gradient also reaches the codec."""
    cfg = config.tiny().override(["train.diffusion_start_step=5", "train.rate_weight_start=1.0"])
    params = training.init_state(cfg, jax.random.PRNGKey(0)).params
    x = _batch()
    levels = random_levels(jax.random.PRNGKey(1), 2, 4, 4, 5)
    grad = jax.jit(jax.grad(partial(training.loss_fn, cfg=cfg), has_aux=True))
    g0, m0 = grad(params, x, levels, jax.random.PRNGKey(2), 4)
    g1, m1 = grad(params, x, levels, jax.random.PRNGKey(2), 5)
    assert float(m0["loss"]) == float(m0["loss_codec"]) and float(m1["loss_diffusion"]) > 0
    assert all(float(np.abs(a).max()) == 0 for a in jax.tree.leaves(g0["unet"]))
    assert max(float(np.abs(a).max()) for a in jax.tree.leaves(g1["unet"])) > 0
    np.testing.assert_allclose(float(m1["loss"]), float(m1["loss_codec"] + m1["loss_diffusion"]), rtol=1e-6)
    assert float(m0["loss_codec"]) == pytest.approx(float(m1["loss_codec"]), rel=1e-6)
    diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), g0["codec"], g1["codec"])
    assert max(jax.tree.leaves(diff)) > 0            # the diffusion loss reaches the encoder...
    assert max(jax.tree.leaves(diff["encoder"])) > 0


def _cmd(run, steps, *extra):
    return [sys.executable, "train/train_codec.py", "--preset", "tiny", "--data", str(SAMPLES),
            "--run", str(run), "--steps", str(steps), "--set", "train.batch_size=4",
            "train.checkpoint_every=3", *extra]


def _log(run):
    """metrics.jsonl as {step: metrics}; a resumed run re-logs steps after its checkpoint, and
    the later line wins."""
    return {m["step"]: m for m in map(json.loads, open(run / "metrics.jsonl"))}


def test_kill9_then_resume_continues_the_same_run(tmp_path):
    """Full (codec + U-Net) training on 4 simulated devices, killed with SIGKILL after its second
    checkpoint and resumed, logs the same losses as an uninterrupted run; export and --init-from
    work on the result."""
    total = 12
    env = subprocess_env()
    subprocess.run(_cmd(tmp_path / "a", total), check=True, cwd=ROOT, env=env, capture_output=True)
    straight = _log(tmp_path / "a")
    proc = subprocess.Popen(_cmd(tmp_path / "b", total), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 600
    while not (ck / "6").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert 6 <= killed_at < total
    out = subprocess.run(_cmd(tmp_path / "b", total, "--resume", "--export", str(tmp_path / "model")),
                         check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    assert f"resumed from step {killed_at}" in out.stderr
    resumed = _log(tmp_path / "b")
    assert sorted(resumed) == list(range(1, total + 1))
    after = range(killed_at + 1, total + 1)
    np.testing.assert_allclose([resumed[s]["loss"] for s in after], [straight[s]["loss"] for s in after],
                               rtol=1e-5)
    assert resumed[total]["loss_diffusion"] > 0
    assert sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) == [6, 9, 12]   # keep 3

    from pcdc_jax import api
    rt = api.load(tmp_path / "model")
    assert rt.cfg.name == "tiny" and rt.has_diffusion

    # --init-from starts a new run (step 0, fresh optimizer) from the exported codec and U-Net
    subprocess.run(_cmd(tmp_path / "c", 0, "train.lmbda=0.002", "--init-from", str(tmp_path / "model"),
                        "--export", str(tmp_path / "model2")), check=True, cwd=ROOT, env=env,
                   capture_output=True)
    rt2 = api.load(tmp_path / "model2")
    assert rt2.cfg.codec == rt.cfg.codec and rt2.cfg.train.lmbda == 0.002
    for a, b in ((rt.params, rt2.params), (rt.model.unet, rt2.model.unet)):
        assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    bad = subprocess.run(_cmd(tmp_path / "d", 0, "diffusion.unet_channels=[8,8,8,8]", "--init-from",
                              str(tmp_path / "model")), cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "architecture" in bad.stderr


def test_two_processes_train_one_model(tmp_path):
    """jax.distributed with 2 local processes of 2 CPU devices each: both see the 4 global devices,
    end with the same state (their gradients agreed at every step), and write one checkpoint."""
    port = free_port()
    env = subprocess_env(devices=2)
    procs = [subprocess.Popen(_cmd(tmp_path / "run", 6, "train.checkpoint_every=3", "train.klt_crops=64", "--coordinator",
                                   f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    summary = [next(line for line in err.splitlines() if line.startswith(f"process {i}/2"))
               for i, (_, err) in enumerate(outs)]
    assert all("4 devices (2 local), step 6" in line for line in summary)
    digests = [line.rsplit(" ", 1)[1] for line in summary]
    assert digests[0] == digests[1]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6"]
    assert sorted(_log(run)) == list(range(1, 7))
    assert len(open(run / "metrics.jsonl").readlines()) == 6          # process 0 logs, once
    subprocess.run([sys.executable, "train/export_model.py", "--run", str(run), "--out", str(tmp_path / "m")],
                   check=True, cwd=ROOT, env=subprocess_env(), capture_output=True)
    from pcdc_jax import checkpoint
    assert checkpoint.load_model(tmp_path / "m").unet is not None


def test_train_summary_counts_training_time_and_draws_grouped_panels(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "eval"))
    import train_summary
    rows = [{"step": s, "steps_per_s": 1.0, "loss": 1.0 / s, "a": 0.2} for s in range(10, 610, 10)]
    rows += [{"step": s, "steps_per_s": 0.5, "loss": 0.001, "a": 0.1, "b": 0.3} for s in range(600, 1210, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_summary.main([str(tmp_path), "--minutes", "5", "--keys", "loss", "a,b", "--window", "50",
                        "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    # 600 steps at 1/s (10 min, the re-logged step 600 counts once) then 600 at 0.5/s (20 min)
    assert "| 5 | 300 | " in out and "| 0.2 | - |" in out
    assert "| 30 (end) | 1200 | 0.001 | 0.1 | 0.3 | 0.50 |" in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="logs no c"):
        train_summary.main([str(tmp_path), "--keys", "a,c"])
