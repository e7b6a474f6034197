import json
import subprocess
import sys

import jax
import numpy as np

from pcdc_jax import config
from pcdc_jax.codec import training
from tests.conftest import ROOT, SAMPLES


def test_loss_falls_on_a_fixed_batch():
    cfg = config.tiny().override(["train.learning_rate=0.003", "train.lr_warmup_steps=1"])
    state = training.init_state(cfg, jax.random.PRNGKey(0))
    step = training.jit_train_step(cfg)
    from tests.conftest import sample_image
    x = jax.numpy.asarray(sample_image()[100:164, 100:228].astype(np.float32) / 255).reshape(2, 64, 64, 3)
    losses = []
    for i in range(30):
        state, m = step(state, x, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_every_level_is_sampled():
    lv = training.random_levels(jax.random.PRNGKey(0), 4, 8, 8, 5)
    assert set(np.unique(lv)) == set(range(5))


def _train(run, steps, *extra):
    subprocess.run([sys.executable, "train/train_codec.py", "--preset", "tiny", "--data", str(SAMPLES),
                    "--run", str(run), "--steps", str(steps), "--set", "train.batch_size=4", *extra],
                   check=True, cwd=ROOT, capture_output=True)
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def test_resume_continues_the_same_run(tmp_path):
    """On 4 simulated devices: 4 steps + resume to 8 equals 8 steps straight; export loads."""
    straight = _train(tmp_path / "a", 8)
    _train(tmp_path / "b", 4)
    resumed = _train(tmp_path / "b", 8, "--resume", "--export", str(tmp_path / "model"))
    assert [m["step"] for m in resumed] == list(range(1, 9))
    np.testing.assert_allclose([m["loss"] for m in resumed], [m["loss"] for m in straight], rtol=1e-5)
    from pcdc_jax import api
    rt = api.load(tmp_path / "model")
    assert rt.cfg.name == "tiny"

    # --init-from starts a new run (step 0, fresh optimizer) from the exported weights
    subprocess.run([sys.executable, "train/train_codec.py", "--preset", "small", "--data", str(SAMPLES),
                    "--run", str(tmp_path / "c"), "--steps", "0", "--init-from", str(tmp_path / "model"),
                    "--set", "train.lmbda=0.002", "--export", str(tmp_path / "model2")],
                   check=True, cwd=ROOT, capture_output=True)
    rt2 = api.load(tmp_path / "model2")
    assert rt2.cfg.codec == rt.cfg.codec and rt2.cfg.train.lmbda == 0.002
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rt.params), jax.tree.leaves(rt2.params)))
    bad = subprocess.run([sys.executable, "train/train_codec.py", "--data", str(SAMPLES), "--run",
                          str(tmp_path / "d"), "--init-from", str(tmp_path / "model"),
                          "--set", "codec.latent_channels=7"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "architecture" in bad.stderr
