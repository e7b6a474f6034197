"""Typed configuration: frozen dataclasses, named presets, JSON round trip.

Every number that shapes the bitstream lives here, so a model directory's `config.json` is all a
decoder needs besides the weights and coding tables.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """Learned latent codec (encoder, hyperprior, context decoder) and its coding tables."""

    latent_channels: int = 128          # M: channels of y, one latent position per 16x16 block
    hyper_channels: int = 64            # Cz: channels of z (stride 64 on the image)
    encoder_channels: tuple[int, ...] = (64, 128, 160)   # after each of the first three 2x downs
    hyper_hidden: int = 128             # width of hyper encoder / decoder
    decoder_channels: tuple[int, ...] = (192, 128, 96, 64)  # context features at strides 16,8,4,2
    decoder_res_blocks: int = 1         # residual blocks at each decoder scale
    # A linear 16x16-block transform beside the convolutional stacks (encoder: block pixels ->
    # latent; decoder: latent -> block pixels). Learns a KLT-like code within a few hundred CPU
    # steps, which the nonlinear layers then refine (measured in BENCHMARKS.md).
    linear_skip: bool = True
    # Kernel side of the convolutions that read or write y (encoder output, hyper-encoder and
    # context-decoder inputs): 1 keeps a wide latent cheap.
    latent_kernel: int = 3
    # The hyper encoder also reads ln(1 + |y|), the local activity that the scales follow, beside
    # y itself; with it the hyper path can start as a working scale model (`codec.klt`).
    hyper_log_input: bool = False
    # K quantization levels. Level k divides (y - mu) by step_k = exp(scale_log_delta * e_k).
    # Level 0 is the coarsest (fewest bits), level K-1 the finest. Integer exponents keep the
    # scale-index arithmetic exact: index(level k) = t - e_k with t the integer log-scale.
    level_exponents: tuple[int, ...] = (10, 5, 0, -5, -10)
    # Fixed Gaussian scale table: sigma_i = scale_min * exp(scale_log_delta * i), i < num_scales.
    scale_min: float = 0.11
    scale_log_delta: float = 0.1
    num_scales: int = 64
    tail_mass: float = 1e-9             # probability mass left to the escape symbol
    cdf_precision: int = 16             # integer frequency tables sum to 2**cdf_precision
    likelihood_bound: float = 1e-9
    max_symbol: int = 2**20             # |symbol| is clipped here (escape codes up to 2**20)
    # Integer hyper-decoder: weights in fixed point with `int_weight_bits` fractional bits,
    # activations with `int_act_bits`; every product and sum is an exact integer below 2**53.
    int_weight_bits: int = 12
    int_act_bits: int = 8
    int_act_max: float = 127.0
    hyper_input_max: int = 255          # z symbols are clipped to +-this before the hyper decoder
    z_table_range: int = 256            # z tables are searched over [-range, range]

    @property
    def num_levels(self) -> int:
        return len(self.level_exponents)

    def level_steps(self) -> tuple[float, ...]:
        return tuple(math.exp(self.scale_log_delta * e) for e in self.level_exponents)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training schedule of the full codec: rate + level-weighted MSE of x_base + diffusion loss.

    The schedule is explicit (CDC's recipe leaves its warm-up undocumented, and its users get gray
    images without one): the rate weight ramps from `rate_weight_start` to 1 over
    `rate_warmup_steps`, and the diffusion loss joins at `diffusion_start_step`, once x_base and the
    context features it conditions on carry the image.
    """

    batch_size: int = 8
    crop_size: int = 128
    learning_rate: float = 3e-4
    lr_final_fraction: float = 0.1      # cosine decay to this fraction of the peak
    lr_warmup_steps: int = 200
    total_steps: int = 20000
    grad_clip: float = 1.0
    # Distortion weight at the middle level; level k uses lmbda * (step_mid / step_k)**2 so every
    # level sits at its own high-rate optimal trade-off (D ~ step**2).
    lmbda: float = 0.013
    # Explicit warm-up of the rate term: weight ramps linearly from rate_weight_start to 1 over
    # rate_warmup_steps (a low start avoids collapsing to a gray, zero-rate image).
    rate_weight_start: float = 0.1
    rate_warmup_steps: int = 1000
    # The hyper decoder reads z rounded (straight-through), as when coding, instead of noised.
    hyper_rounded_z: bool = False
    # Weight of the diffusion U-Net's loss (x0 loss + diffusion.lpips_weight * LPIPS) in the joint
    # loss; 0 trains the codec alone (no U-Net in the state). Its gradient reaches the codec through
    # x_base and the context features, as in CDC's end-to-end training.
    diffusion_weight: float = 1.0
    diffusion_start_step: int = 500
    # Start from the KLT of 16x16 blocks (`codec.klt`) estimated on this many training crops (the
    # first batches of the run), with `klt_step` the middle level's quantization step in pixel
    # units of [0, 1]; 0 keeps the random initialisation.
    klt_crops: int = 0
    klt_step: float = 40 / 255
    # Learning-rate factor of the linear block paths: Adam moves every weight by about the
    # learning rate per step, which a KLT start's small weights cannot take.
    linear_lr_scale: float = 1.0
    # Learning-rate factor of the entropy model (hyper encoder, hyper decoder, z prior). Its
    # scale indices and fixed-point weights move by whole grid steps, slowly at the transforms'
    # learning rate.
    entropy_lr_scale: float = 1.0
    # Steps during which the encoder and decoder stay frozen and only the entropy model (hyper
    # encoder, hyper decoder, z prior) learns: a KLT start's transforms are already good, and the
    # rate gradients of an untrained entropy model would only wreck them.
    transform_freeze_steps: int = 0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Conditional diffusion decoder: U-Net, schedule, sampling windows, loss.

    The U-Net works at strides 2, 4, 8 and 16 (one width per stride, `unet_channels`); its input
    is the noisy residual and x_base, and it takes the context decoder's feature map of the same
    stride at every resolution. It predicts the residual r0 = (x - x_base) / residual_scale
    (CDC's x-parameterization on top of x_base), so `steps=0` is x_base.
    """

    unet_channels: tuple[int, ...] = (32, 64, 96, 128)   # widths at strides 2, 4, 8, 16
    unet_res_blocks: int = 1            # residual blocks per resolution on each path
    attention_heads: int = 4            # self-attention at stride 16 (0 disables it)
    time_dim: int = 128                 # timestep embedding width
    schedule: str = "cosine"            # "cosine" or "linear"
    residual_scale: float = 0.1         # r0 has roughly unit scale after dividing by this
    default_steps: int = 4              # DDIM steps `pcdc decompress` uses without --steps
    eta: float = 0.0                    # DDIM eta (0: deterministic given the seed)
    # The diffusion runs over t in (0, t_start]: training draws t ~ U(0, t_start) and sampling
    # starts from x_base noised to t_start (1: from pure noise; below 1, a truncated diffusion
    # that refines x_base and spends the U-Net's capacity on the noise levels it meets).
    t_start: float = 1.0
    # Sampler-in-the-loop training: a `chain_fraction` of each batch gets, instead of the residual
    # noised to a random t, the state the `chain_steps`-step DDIM sampler itself reaches at one of
    # its times (step k ~ U{0..chain_steps-1}, run with the current U-Net, no gradient), so every
    # step the sampler takes, the last one included, is trained on the inputs it will meet.
    # chain_steps=1 is the sampler's first input alone: x_base noised to t_start, no residual.
    chain_fraction: float = 0.0
    chain_steps: int = 16
    window: int = 256                   # sampling window side in pixels (multiple of 16)
    overlap: int = 64                   # overlap of neighbouring windows in pixels (multiple of 16)
    window_batch: int = 8               # windows per sampling call (rounded up to the device count)
    # Loss weight of the x0 prediction at time t: clip(SNR(t), snr_min, snr_max) (truncated
    # SNR weighting; the floor keeps the one-step prediction at t=1 trained).
    snr_min: float = 1.0
    snr_max: float = 5.0
    lpips_weight: float = 0.0           # optional LPIPS (AlexNet) on the x0 prediction

    def __post_init__(self):
        if self.window % 16 or self.overlap % 16 or not 0 <= self.overlap < self.window:
            raise ValueError(f"window {self.window} and overlap {self.overlap} must be multiples "
                             "of 16 with 0 <= overlap < window")
        if len(self.unet_channels) != 4:
            raise ValueError("unet_channels needs one width for each of strides 2, 4, 8, 16")
        if not 0.0 <= self.chain_fraction <= 1.0:
            raise ValueError(f"chain_fraction {self.chain_fraction} must be in [0, 1]")
        if self.chain_steps < 1:
            raise ValueError(f"chain_steps {self.chain_steps} must be at least 1")
        if not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"t_start {self.t_start} must be in (0, 1]")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"unknown schedule {self.schedule!r} (cosine or linear)")


@dataclasses.dataclass(frozen=True)
class AllocationConfig:
    """The PPO-Lagrangian block-level bit allocator (PCDC section II-B, eqs. 2-10).

    The policy reads encoder-side signals only (high-pass residual statistics, a pooled latent
    embedding, the block's row of the exact rate table, the remaining budget, the position) and
    picks one of K levels per block; its reward decodes with the real diffusion decoder.
    """

    hidden: tuple[int, ...] = (64, 64)  # actor and critic MLP widths (separate networks)
    latent_groups: int = 8              # pooled latent embedding: channel groups of y
    # Reward (eqs. 5-6): U = -(w_mse MSE + w_ssim (1 - SSIM) + w_lpips LPIPS + w_dists DISTS),
    # r = U - eta (R_tot - R_max), rates in bits per pixel; the paper's weights.
    w_mse: float = 1.0
    w_ssim: float = 0.5
    w_lpips: float = 0.2
    w_dists: float = 0.2
    reward_steps: int = 2               # DDIM steps of the decoder inside the reward
    # U is measured relative to the uniform allocation (CDC) of the same crop and budget, decoded
    # with the same noise: an action-independent baseline (the policy gradient stays unbiased)
    # that removes the content's share of U, which the per-block critic cannot see. False: the
    # paper's raw U.
    relative_reward: bool = True
    # Dual ascent on eta (eq. 8): eta <- max(0, eta + dual_lr * mean(R_tot - R_max)).
    dual_lr: float = 1e-3
    eta_init: float = 0.0
    # PPO (eqs. 9-10): clipped surrogate, entropy bonus, critic regression, paper's rates.
    clip: float = 0.2
    entropy_weight: float = 0.01
    value_weight: float = 0.5
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    grad_clip: float = 1.0
    epochs: int = 4                     # passes over all blocks of the batch per update
    minibatches: int = 4                # minibatches per pass
    normalize_advantages: bool = True
    # Training episodes: each crop's budget R_max lies a fraction u ~ U(budget_lo, budget_hi) of
    # the way from its coarsest-uniform to its finest-uniform rate.
    budget_lo: float = 0.05
    budget_hi: float = 0.95
    # Test-time adaptation (`--adapt-steps`): episodes (crops of the image) per PPO update.
    adapt_episodes: int = 8
    adapt_crop: int = 128

    def __post_init__(self):
        if self.reward_steps < 0:
            raise ValueError(f"reward_steps {self.reward_steps} must be >= 0")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("epochs and minibatches must be at least 1")
        if not 0.0 <= self.budget_lo <= self.budget_hi <= 1.0:
            raise ValueError(f"need 0 <= budget_lo <= budget_hi <= 1, got {self.budget_lo}, "
                             f"{self.budget_hi}")
        if self.adapt_crop % 16 or self.adapt_crop < 16:
            raise ValueError(f"adapt_crop {self.adapt_crop} must be a positive multiple of 16")


@dataclasses.dataclass(frozen=True)
class ContainerConfig:
    """Limits the .pcdc parser checks before allocating anything."""

    tile_latent: int = 32               # tile side in latent positions (32 -> 512 pixels)
    max_pixels: int = 100_000_000       # absurd-size guard (H * W)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "base"
    codec: CodecConfig = CodecConfig()
    train: TrainConfig = TrainConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    container: ContainerConfig = ContainerConfig()
    allocation: AllocationConfig = AllocationConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return _from_dict(cls, d)

    @classmethod
    def from_json(cls, s: str) -> "Config":
        return cls.from_dict(json.loads(s))

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)

    def override(self, assignments) -> "Config":
        """Applies "section.field=value" strings (value parsed as JSON, else kept as a string)."""
        d = self.to_dict()
        for a in assignments:
            key, sep, value = a.partition("=")
            section, dot, field = key.partition(".")
            if not sep or not dot or section not in d or not isinstance(d[section], dict) \
                    or field not in d[section]:
                raise ValueError(f"bad override {a!r}: expected section.field=value with a known field")
            try:
                d[section][field] = json.loads(value)
            except json.JSONDecodeError:
                d[section][field] = value
        return Config.from_dict(d)


def _from_dict(cls, d):
    """Builds a (nested) frozen dataclass from a dict, turning JSON lists back into tuples."""
    if not isinstance(d, dict):
        raise TypeError(f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name) if name in fields else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def tiny() -> Config:
    """Minutes-fast preset for tests."""
    return Config(
        name="tiny",
        codec=CodecConfig(latent_channels=16, hyper_channels=8, encoder_channels=(8, 16, 16),
                          hyper_hidden=16, decoder_channels=(24, 16, 12, 8), decoder_res_blocks=0,
                          latent_kernel=1, hyper_log_input=True),
        train=TrainConfig(batch_size=2, crop_size=64, total_steps=20, lr_warmup_steps=2,
                          rate_warmup_steps=5, diffusion_start_step=2, checkpoint_every=5,
                          log_every=1),
        diffusion=DiffusionConfig(unet_channels=(8, 16, 16, 16), attention_heads=1, time_dim=16,
                                  window=128, overlap=32, window_batch=8),
        container=ContainerConfig(tile_latent=4),
        allocation=AllocationConfig(hidden=(16, 16), latent_groups=4, reward_steps=1,
                                    adapt_episodes=2, adapt_crop=64),
    )


def cpu() -> Config:
    """The preset designed to train on a 2-core CPU (the shipped default model has its earlier,
    128-channel codec; its config.json says so).

    Narrow convolutional paths (48-96-128 encoder) beside a full-rank linear block transform: 768
    latent channels, as many as a 16x16 RGB block has values, so no quantization level is capped
    by what the latent can hold; training starts from the blocks' KLT. A 3.6M-parameter U-Net on
    8 crops of 128x128. Measured training speed in BENCHMARKS.md (`eval/bench_train.py`).
    """
    return Config(
        name="cpu",
        codec=CodecConfig(latent_channels=768, hyper_channels=64, encoder_channels=(48, 96, 128),
                          hyper_hidden=96, decoder_channels=(160, 128, 64, 32),
                          decoder_res_blocks=1, latent_kernel=1, level_exponents=(16, 8, 0, -8, -16),
                          num_scales=80, hyper_log_input=True),
        train=TrainConfig(learning_rate=3e-4, total_steps=10000, lmbda=0.025, klt_crops=1024,
                          transform_freeze_steps=500, linear_lr_scale=0.1, entropy_lr_scale=10.0,
                          rate_warmup_steps=0),
    )


def small() -> Config:
    """One-GPU preset: the `cpu` architecture (39 MB of float32 weights with the U-Net, just under
    the repository's 40 MB limit for a shipped model) trained on 16 crops of 256x256 for many
    more steps."""
    c = cpu()
    return c.replace(name="small", train=dataclasses.replace(
        c.train, batch_size=16, crop_size=256, learning_rate=5e-4, total_steps=50000,
        diffusion_start_step=1000, checkpoint_every=500, log_every=50))


def base() -> Config:
    """Accelerator preset (pods): the widest codec and U-Net, 512-pixel sampling windows."""
    return Config(
        name="base",
        codec=CodecConfig(latent_channels=768, hyper_channels=128, encoder_channels=(96, 192, 256),
                          hyper_hidden=192, decoder_channels=(256, 192, 128, 64),
                          decoder_res_blocks=2, latent_kernel=1, level_exponents=(16, 8, 0, -8, -16),
                          num_scales=80, hyper_log_input=True),
        train=TrainConfig(batch_size=16, crop_size=256, total_steps=200000,
                          diffusion_start_step=5000, checkpoint_every=1000, log_every=100,
                          lmbda=0.025, klt_crops=1024, transform_freeze_steps=2000,
                          linear_lr_scale=0.1, entropy_lr_scale=10.0, rate_warmup_steps=0),
        diffusion=DiffusionConfig(unet_channels=(64, 128, 192, 256), unet_res_blocks=2,
                                  time_dim=256, window=512, overlap=128, window_batch=16),
    )


PRESETS = {"tiny": tiny, "cpu": cpu, "small": small, "base": base}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
