"""Benchmark of the allocation policy: the one-jit PPO update against a per-block Python loop of
the same math, and policy inference time per megapixel at encode time.

  python eval/bench_ppo.py [--blocks 256 1024 4096 16384] [--mp 1 4 20] [--preset cpu] \
      [--out outputs/bench_ppo.json]

Update: one image of N blocks with random states, masks and rewards; `ppo.update` (epochs x
minibatches in one jitted call) against a loop that visits every block of every minibatch in
Python, takes that block's gradient with a jitted per-block function, sums them and applies the
same optimizer step; both start from the same state, use the same permutations and must end at
the same parameters (max difference printed). Times exclude compilation (one warm-up call).
Inference: the greedy masked rollout (`policy.rollout`, one lax.scan over the blocks) plus the
static features of an image of the given megapixels (random content, timing does not depend on it).
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from pcdc_jax import config  # noqa: E402
from pcdc_jax.allocation import features, policy, ppo  # noqa: E402


def random_batch(cfg, n, seed=0):
    rng = np.random.default_rng(seed)
    k = cfg.codec.num_levels
    mask = rng.random((1, n, k)) < 0.7
    mask[..., 0] = True
    traj = policy.Trajectory(
        jnp.asarray(rng.normal(size=(1, n, features.num_features(cfg))), jnp.float32),
        jnp.asarray(mask), jnp.zeros((1, n), jnp.int32), jnp.full((1, n), -1.0), jnp.zeros((1, n)),
        jnp.zeros(1, jnp.int32))
    return ppo.flatten(traj, jnp.asarray(rng.normal(size=1), jnp.float32), jnp.ones((1, n), bool),
                       cfg.allocation.minibatches)


def loop_update(state, batch, key, cfg, grad_one, apply_step):
    """The same update with a Python loop over epochs, minibatches and blocks."""
    ac = cfg.allocation
    n = batch.action.shape[0]
    adv = np.asarray(ppo.normalized_advantages(batch, ac.normalize_advantages))
    host = jax.tree.map(np.asarray, batch)
    params, opt_state = state.params, state.opt_state
    for k in jax.random.split(key, ac.epochs):
        perm = np.asarray(jax.random.permutation(k, n)).reshape(ac.minibatches, -1)
        for idx in perm:
            total = max(float(host.weight[idx].sum()), 1.0)
            grads = None
            for i in idx:                                     # one block at a time
                one = jax.tree.map(lambda a: a[i:i + 1], host)
                g = grad_one(params, one, adv[i:i + 1], total)
                grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            params, opt_state = apply_step(params, opt_state, grads)
    return params


def bench_update(cfg, n, repeats):
    state = ppo.init_state(cfg, policy.init_params(cfg, jax.random.PRNGKey(0)))
    batch = random_batch(cfg, n)
    key = jax.random.PRNGKey(1)
    update = ppo.jit_update(cfg)
    jax.block_until_ready(update(state, batch, key))          # compile
    t0 = time.perf_counter()
    for _ in range(repeats):
        new, _ = update(state, batch, key)
        jax.block_until_ready(new.params)
    t_jit = (time.perf_counter() - t0) / repeats

    opt = ppo.make_optimizer(cfg.allocation)

    @jax.jit
    def grad_one(params, one, adv, total):
        # the minibatch loss is a weighted mean: this block's share is its weight / total
        def f(p):
            loss, _ = ppo.loss_fn(p, one, adv, cfg)
            return loss * jnp.maximum(jnp.sum(one.weight), 1.0) / total
        return jax.grad(f)(params)

    @jax.jit
    def apply_step(params, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    loop_update(state, random_batch(cfg, cfg.allocation.minibatches), key, cfg, grad_one, apply_step)
    t0 = time.perf_counter()
    p_loop = loop_update(state, batch, key, cfg, grad_one, apply_step)
    jax.block_until_ready(p_loop)
    t_loop = time.perf_counter() - t0
    diff = max(float(jnp.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(new.params), jax.tree.leaves(p_loop)))
    return {"blocks": n, "padded_blocks": int(batch.action.shape[0]), "jit_s": t_jit,
            "loop_s": t_loop, "speedup": t_loop / t_jit, "max_param_diff": diff}


def bench_inference(cfg, mp, repeats):
    side = int(round(np.sqrt(mp * 1e6) / 64)) * 64
    h, w = side, side
    hl, wl, m = h // 16, w // 16, cfg.codec.latent_channels
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((h, w, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(hl, wl, m)), jnp.float32)
    t = jnp.asarray(rng.integers(20, 40, (hl, wl, m)), jnp.int32)
    rates = jnp.asarray(np.sort(rng.uniform(10, 2000, (hl * wl, cfg.codec.num_levels)), -1), jnp.float32)
    params = policy.init_params(cfg, jax.random.PRNGKey(0))
    symbols = jnp.asarray(rng.integers(-3, 4, (cfg.codec.num_levels, hl, wl, m)), jnp.int32)
    feats = jax.jit(lambda x, y, t, s, r: features.static(x, y, y * 0, t, s, r, cfg))
    roll = jax.jit(functools.partial(policy.rollout, cfg=cfg, greedy=True))
    budget = float(rates[:, 2].sum())

    def run():
        static = feats(x, y, t, symbols, rates)
        env = policy.make_env(static, rates, jnp.ones(hl * wl, bool), budget)
        return jax.block_until_ready(roll(params, env, jax.random.PRNGKey(0)).action)

    run()
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    dt = (time.perf_counter() - t0) / repeats
    return {"megapixels": h * w / 1e6, "blocks": hl * wl, "seconds": dt, "s_per_mp": dt / (h * w / 1e6)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--mp", type=float, nargs="+", default=[1, 4, 20])
    ap.add_argument("--preset", default="cpu", help="config preset (policy sizes; default cpu)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="outputs/bench_ppo.json")
    args = ap.parse_args(argv)
    cfg = config.preset(args.preset)
    res = {"device": jax.devices()[0].device_kind, "platform": platform.platform(),
           "jax": jax.__version__, "preset": args.preset,
           "epochs": cfg.allocation.epochs, "minibatches": cfg.allocation.minibatches,
           "update": [], "inference": []}
    for n in args.blocks:
        r = bench_update(cfg, n, args.repeats)
        print(f"update {n:6d} blocks: jit {r['jit_s'] * 1e3:8.1f} ms, loop {r['loop_s']:8.2f} s, "
              f"x{r['speedup']:.0f}, max param diff {r['max_param_diff']:.1e}", flush=True)
        res["update"].append(r)
    for mp in args.mp:
        r = bench_inference(cfg, mp, args.repeats)
        print(f"inference {r['megapixels']:.1f} MP ({r['blocks']} blocks): {r['seconds']:.3f} s, "
              f"{r['s_per_mp']:.3f} s/MP", flush=True)
        res["inference"].append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
