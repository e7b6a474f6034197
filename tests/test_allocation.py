"""The PPO-Lagrangian allocator: budget mask, PPO math against NumPy, one-jit update, learning on
a synthetic environment with a known optimum, and the codec's budget guarantee end to end."""
import dataclasses
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pcdc_jax import api, checkpoint, config
from pcdc_jax.allocation import features, policy, ppo
from pcdc_jax.errors import BudgetError
from conftest import ROOT, SAMPLES

CFG = config.tiny()
K = CFG.codec.num_levels


def random_env(rng, n, frac):
    rates = rng.uniform(1, 60, (n, K)).cumsum(1)                 # increasing in k
    inside = rng.random(n) < 0.8
    lo, hi = np.ceil(rates[:, 0]).sum(), np.ceil(rates[:, -1]).sum()
    static = rng.normal(size=(n, features.num_static(CFG))).astype(np.float32)
    return policy.make_env(static, rates, inside, lo + frac * (hi - lo))


# ----------------------------------------------------------------------------------- the mask
@settings(max_examples=25, deadline=None)
@given(n=st.sampled_from([1, 7, 40]), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_rollout_never_exceeds_budget_and_masked_levels_get_no_probability(n, frac, seed):
    rng = np.random.default_rng(seed)
    env = random_env(rng, n, frac)
    params = policy.init_params(CFG, jax.random.PRNGKey(seed))
    params["actor"] = jax.tree.map(lambda a: a * 50.0, params["actor"])   # peaked logits
    traj = _rollout(params, env, jax.random.PRNGKey(seed + 1))
    rates, budget = np.asarray(env.rates), int(env.budget)
    assert int(traj.bits) == rates[np.arange(n), np.asarray(traj.action)].sum() <= budget
    # the mask is exactly "fits while leaving level 0 for every later block" (level 0 on padding)
    remaining = budget - np.concatenate([[0], np.cumsum(rates[np.arange(n), traj.action])[:-1]])
    floor_after = np.concatenate([np.cumsum(rates[::-1, 0])[::-1][1:], [0]])
    expect = (rates + floor_after[:, None] <= remaining[:, None]) & np.asarray(env.inside)[:, None]
    expect[:, 0] = True
    np.testing.assert_array_equal(np.asarray(traj.mask), expect)
    assert np.asarray(traj.mask)[np.arange(n), traj.action].all()
    logits, _ = policy.apply(params, traj.obs, CFG)
    probs = np.asarray(policy.distribution(logits, traj.mask).probs)
    assert (probs[~expect] == 0.0).all() and np.allclose(probs.sum(-1), 1.0)


@functools.lru_cache(maxsize=None)
def _jit_rollout(greedy=False):
    return jax.jit(functools.partial(policy.rollout, cfg=CFG, greedy=greedy))


def _rollout(params, env, key, greedy=False):
    return _jit_rollout(greedy)(params, env, key)


# ----------------------------------------------------------------------------- PPO vs NumPy
def _np_log_softmax(a):
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def _np_loss(params, b, cfg):
    """Eqs. 9-10 in plain NumPy (float64) on a Batch, with the network from policy.apply."""
    ac = cfg.allocation
    logits, value = (np.asarray(v, np.float64) for v in policy.apply(params, b.obs, cfg))
    w = np.asarray(b.weight, np.float64)
    adv = np.asarray(b.ret, np.float64) - np.asarray(b.value, np.float64)          # eq. 9
    mean = (w * adv).sum() / w.sum()
    adv = (adv - mean) / (np.sqrt((w * (adv - mean) ** 2).sum() / w.sum()) + 1e-8)
    lp_all = _np_log_softmax(np.where(b.mask, logits, -1e9))
    lp = lp_all[np.arange(len(w)), np.asarray(b.action)]
    ratio = np.exp(lp - np.asarray(b.logp, np.float64))
    surr = np.minimum(ratio * adv, np.clip(ratio, 1 - ac.clip, 1 + ac.clip) * adv)
    ent = -np.where(b.mask, np.exp(lp_all) * lp_all, 0.0).sum(-1)
    wm = lambda a: (w * a).sum() / w.sum()  # noqa: E731
    actor = -wm(surr) - ac.entropy_weight * wm(ent)
    critic = wm((value - np.asarray(b.ret, np.float64)) ** 2)
    return actor + ac.value_weight * critic, adv


def _batch(seed, b=3, n=10):
    rng = np.random.default_rng(seed)
    envs = [random_env(rng, n, 0.5) for _ in range(b)]
    env = jax.tree.map(lambda *a: jnp.stack(a), *envs)
    params = policy.init_params(CFG, jax.random.PRNGKey(seed))
    traj = policy.rollout_batch(params, env, jax.random.PRNGKey(1), cfg=CFG)
    ret = jnp.asarray(rng.normal(size=b), jnp.float32)
    return params, traj, env, ppo.flatten(traj, ret, env.inside, CFG.allocation.minibatches)


def test_ppo_loss_and_advantages_match_numpy():
    params, traj, env, b = _batch(0)
    # perturb the parameters so that ratios differ from 1 and clipping is exercised
    moved = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(5), a.shape), params)
    adv = ppo.normalized_advantages(b, True)
    loss, metrics = ppo.loss_fn(moved, b, adv, CFG)
    ref, ref_adv = _np_loss(moved, b, CFG)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4, atol=1e-6)
    assert float(metrics["clip_fraction"]) > 0
    # eq. 9 itself, and the padding: every padded block has weight 0 and a one-level mask
    np.testing.assert_allclose(ppo.advantages(b.ret, b.value), np.asarray(b.ret) - np.asarray(b.value))
    n = traj.action.size
    assert b.action.shape[0] == ppo.bucket(n, CFG.allocation.minibatches) >= n
    assert (np.asarray(b.weight)[n:] == 0).all() and np.asarray(b.mask)[n:, 0].all()
    np.testing.assert_array_equal(np.asarray(b.weight)[:n], np.asarray(env.inside).reshape(-1))


def test_reward_and_dual_update_match_numpy():
    u, bits, budget = np.array([-0.2, -0.1]), np.array([900, 1200]), np.array([1000, 1000])
    pixels, eta = 256 * 16, 0.5
    np.testing.assert_allclose(ppo.reward(u, bits, budget, pixels, eta),
                               u - eta * (bits - budget) / pixels, rtol=1e-6)            # eq. 6
    lr = 1e-3
    np.testing.assert_allclose(float(ppo.dual_update(eta, bits, budget, pixels, lr)),
                               max(0.0, eta + lr * np.mean((bits - budget) / pixels)), rtol=1e-6)
    assert float(ppo.dual_update(0.0, np.array([0]), np.array([1000]), pixels, lr)) == 0.0  # projected


def test_update_jit_equals_no_jit_and_keeps_the_normalization():
    cfg = CFG.replace(allocation=dataclasses.replace(CFG.allocation, epochs=2, minibatches=1))
    params, _, _, b = _batch(1)
    state = ppo.init_state(cfg, params)
    key = jax.random.PRNGKey(3)
    s1, m1 = ppo.jit_update(cfg)(state, b, key)
    with jax.disable_jit():
        s2, m2 = ppo.update(state, b, key, cfg=cfg)
    for a, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-4, atol=1e-6)
    assert int(s1.step) == 1
    moved = sum(float(jnp.abs(a - c).sum()) for a, c in
                zip(jax.tree.leaves(s1.params["actor"]), jax.tree.leaves(params["actor"])))
    assert moved > 0
    # the frozen observation normalization does not move
    for a, c in zip(jax.tree.leaves(s1.params["norm"]), jax.tree.leaves(params["norm"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_update_is_one_compiled_call_for_any_number_of_blocks():
    traces = []

    def counted(state, batch, key):
        traces.append(batch.action.shape[0])
        return ppo.update(state, batch, key, cfg=CFG)

    fn = jax.jit(counted)
    state = ppo.init_state(CFG, policy.init_params(CFG, jax.random.PRNGKey(0)))
    f = features.num_features(CFG)
    for b, n in ((2, 50), (3, 40), (1, 128), (4, 30)):     # 100, 120, 128, 120 blocks
        z = jnp.zeros((b, n))
        traj = policy.Trajectory(jnp.ones((b, n, f)), jnp.ones((b, n, K), bool), z.astype(jnp.int32),
                                 z - 1.6, z, jnp.zeros(b, jnp.int32))
        batch = ppo.flatten(traj, jnp.arange(b, dtype=jnp.float32), jnp.ones((b, n), bool),
                            CFG.allocation.minibatches)
        state, _ = fn(state, batch, jax.random.PRNGKey(n))
    # one trace (= one compilation) serves 100 to 128 blocks: epochs and minibatches are inside
    assert traces == [128]


# ------------------------------------------------------------- a synthetic known-optimum task
# Blocks are flat (cheap, little to gain from bits) or textured (costly, gains a lot); the
# best allocation under the budget is a multiple-choice knapsack solved exactly below.
SYN_RATES = np.array([[2, 4, 6, 8, 10], [8, 16, 24, 32, 40]])
SYN_UTIL = np.array([[0, .05, .06, .065, .07], [0, .4, .7, .9, 1.0]])
SYN_N = 16


def syn_episodes(rng, count):
    types = (rng.random((count, SYN_N)) < rng.uniform(0.2, 0.8, (count, 1))).astype(int)
    rates = SYN_RATES[types].astype(np.float32)
    lo, hi = rates[..., 0].sum(-1), rates[..., -1].sum(-1)
    budget = np.floor(lo + rng.uniform(0.1, 0.7, count) * (hi - lo))
    static = np.zeros((count, SYN_N, features.num_static(CFG)), np.float32)
    static[..., 0] = types
    static[..., -K:] = np.asarray(features.rate_features(rates))
    env = policy.Env(jnp.asarray(static), jnp.asarray(rates, jnp.int32), jnp.ones((count, SYN_N), bool),
                     jnp.asarray(budget, jnp.int32))
    return types, env


def syn_optimum(types, budget):
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    for t in types:
        new = np.full(budget + 1, -np.inf)
        for k in range(K):
            c = SYN_RATES[t, k]
            new[c:] = np.maximum(new[c:], best[:budget + 1 - c] + SYN_UTIL[t, k])
        best = new
    return best.max()


def test_ppo_reaches_90_percent_of_the_optimum_on_a_synthetic_task():
    cfg = CFG.replace(allocation=dataclasses.replace(CFG.allocation, hidden=(32, 32)))
    rng = np.random.default_rng(0)
    params = policy.init_params(cfg, jax.random.PRNGKey(0))
    state = ppo.init_state(cfg, params)
    rollout = jax.jit(functools.partial(policy.rollout_batch, cfg=cfg))
    update = ppo.jit_update(cfg)

    @jax.jit
    def iteration(state, env, types, key):
        kr, ku = jax.random.split(key)
        traj = rollout(state.params, env, kr)
        u = jnp.take_along_axis(jnp.asarray(SYN_UTIL)[types], traj.action[..., None], -1)[..., 0].sum(-1)
        r = ppo.reward(u, traj.bits, env.budget, SYN_N * 256, state.eta)
        new, _ = update(state, ppo.flatten(traj, r, env.inside, cfg.allocation.minibatches), ku)
        return new._replace(eta=ppo.dual_update(state.eta, traj.bits, env.budget, SYN_N * 256,
                                                cfg.allocation.dual_lr)), jnp.mean(u)

    types, env = syn_episodes(rng, 64)
    obs = policy.rollout_batch(params, env, jax.random.PRNGKey(1), cfg=cfg).obs
    state = state._replace(params=policy.set_normalization(
        state.params, obs.reshape(-1, obs.shape[-1]), jnp.ones(obs.shape[0] * obs.shape[1])))
    for i in range(300):
        types, env = syn_episodes(rng, 64)
        state, _ = iteration(state, env, jnp.asarray(types), jax.random.PRNGKey(i))
    assert float(state.eta) == 0.0         # the mask keeps R_tot <= R_max, so eq. 8 projects to 0

    types, env = syn_episodes(np.random.default_rng(123), 100)
    traj = jax.jit(functools.partial(policy.rollout_batch, cfg=cfg, greedy=True))(
        state.params, env, jax.random.PRNGKey(0))
    got = SYN_UTIL[types, np.asarray(traj.action)].sum()
    best = sum(syn_optimum(t, int(b)) for t, b in zip(types, np.asarray(env.budget)))
    rates, budget = np.asarray(env.rates), np.asarray(env.budget)
    ku = np.array([max(k for k in range(K) if r[:, k].sum() <= b) for r, b in zip(rates, budget)])
    uniform = SYN_UTIL[types, ku[:, None]].sum()
    assert uniform < 0.75 * best                     # the task is not solved by one level
    print("synthetic: ppo", got / best, "uniform", uniform / best)
    assert got >= 0.9 * best, (got / best, uniform / best)
    assert (np.asarray(traj.bits) <= budget).all()


# ------------------------------------------------------------------- the codec end to end
@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, tiny_diffusion_model_dir):
    m = checkpoint.load_model(tiny_diffusion_model_dir)
    params = jax.device_get(policy.init_params(m.cfg, jax.random.PRNGKey(7)))
    d = tmp_path_factory.mktemp("models") / "tiny_policy"
    checkpoint.export_model(d, m.cfg, m.params, m.tables, unet=m.unet, policy=params)
    return api.load(d)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(8, 100), w=st.integers(8, 100), ratio=st.floats(2.0, 60.0),
       pol=st.sampled_from(api.POLICIES), seed=st.integers(0, 2 ** 16))
def test_coded_file_never_exceeds_the_budget(tiny_policy, h, w, ratio, pol, seed):
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    limit = api.budget_bytes(h, w, ratio=ratio)
    try:
        r = api.compress(image, tiny_policy, ratio=ratio, policy=pol)
    except BudgetError as e:
        assert e.min_bytes > limit
        return
    assert len(r.data) <= limit
    assert r.policy in (pol, "uniform")
    out = api.decompress(r.data, tiny_policy, steps=0)
    assert out.shape == image.shape


def test_policies_spend_the_budget_uniform_leaves(tiny_policy, coffee):
    image = coffee[:128, :192]
    sizes = {p: len(api.compress(image, tiny_policy, ratio=12, policy=p).data) for p in api.POLICIES}
    limit = api.budget_bytes(128, 192, ratio=12)
    assert max(sizes.values()) <= limit
    assert sizes["greedy"] >= sizes["uniform"] and sizes["hf"] >= sizes["uniform"]


def test_default_policy_is_ppo_when_the_model_has_one(tiny_policy, tiny, coffee):
    assert api.compress(coffee[:64, :64], tiny_policy, ratio=8).policy in ("ppo", "uniform")
    assert api.compress(coffee[:64, :64], tiny, ratio=8).policy == "uniform"
    with pytest.raises(ValueError, match="no trained allocation policy"):
        api.compress(coffee[:64, :64], tiny, ratio=8, policy="ppo")
    with pytest.raises(ValueError, match="budget"):
        api.compress(coffee[:64, :64], tiny_policy, policy="hf")


def test_test_time_adaptation_changes_the_policy_and_keeps_the_budget(tiny_policy, coffee):
    image = coffee[:96, :160]
    params = tiny_policy.adapt(image, target_bpp=1.0, steps=2)
    moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params["actor"]),
                                                        jax.tree.leaves(tiny_policy.model.policy["actor"]))]
    assert max(moved) > 0
    r = api.compress(image, tiny_policy, ratio=10, adapt_steps=1)
    assert len(r.data) <= api.budget_bytes(96, 160, ratio=10)


# ----------------------------------------------------------------------------- the pieces
def test_features_match_their_definitions(tiny_policy, coffee):
    from pcdc_jax.allocation import baselines
    rt = tiny_policy
    an = rt.analyze(coffee[:64, :96])
    dist = np.asarray(features.latent_distortion(an.y, an.mu, an.symbols, rt.cfg))
    np.testing.assert_allclose(dist, baselines.distortion_proxy(an.y, an.mu, an.symbols, rt.level_steps),
                               rtol=1e-4, atol=1e-4)
    x = np.random.default_rng(0).random((32, 48, 3)).astype(np.float32)
    lum = x @ np.asarray(features.LUMA, np.float32)
    p = np.pad(lum, 1, mode="edge")
    h = p[1:-1, 1:-1] - 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
    energy = (h ** 2).reshape(2, 16, 3, 16).mean((1, 3))
    np.testing.assert_allclose(np.asarray(features.hf_energy(x)), energy, rtol=1e-5)
    assert an.static.shape == (an.rates.shape[0], features.num_static(rt.cfg))
    np.testing.assert_allclose(an.static[:, -K:], np.log1p(an.rates / 256), rtol=1e-5)


def test_train_script_resumes_and_exports_a_model_with_its_policy(tmp_path, tiny_diffusion_model_dir, coffee):
    sys.path.insert(0, str(ROOT / "train"))
    import train_policy
    run = tmp_path / "run"
    argv = ["--model", str(tiny_diffusion_model_dir), "--data", str(SAMPLES), "--run", str(run),
            "--set", "train.crop_size=64", "train.batch_size=2", "train.log_every=1",
            "train.checkpoint_every=1", "allocation.w_dists=0", "allocation.reward_steps=0",
            "--devices", "1"]     # the plumbing; the full reward is compiled by the adaptation test
    train_policy.main(argv + ["--steps", "2"])
    train_policy.main(argv + ["--steps", "3", "--resume", "--export", str(tmp_path / "model")])
    log = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [m["step"] for m in log] == [1, 2, 3]
    assert {"gain", "utility", "utility_uniform", "lpips", "eta", "entropy"} <= set(log[-1])
    m = checkpoint.load_model(tmp_path / "model")
    assert m.policy is not None and m.unet is not None
    assert m.fingerprint == checkpoint.load_model(tiny_diffusion_model_dir).fingerprint
    rt = api.Runtime(m)
    r = api.compress(coffee[:64, :64], rt, ratio=8)
    assert r.policy == "ppo" and len(r.data) <= api.budget_bytes(64, 64, ratio=8)
