"""The learned latent codec as one Flax module (encoder, hyperprior, context decoder)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdc_jax.codec import quantize as q
from pcdc_jax.codec.decoder import ContextDecoder
from pcdc_jax.codec.encoder import Encoder, HyperEncoder
from pcdc_jax.codec.prior import (FactorizedPrior, HyperDecoder, gaussian_likelihood,
                                  sigma_straight_through)
from pcdc_jax.config import CodecConfig


class Codec(nn.Module):
    """Use `Codec(cfg).apply(variables, ..., method=...)`; `__call__` is the training forward."""

    cfg: CodecConfig

    def setup(self):
        self.encoder = Encoder(self.cfg)
        self.hyper_encoder = HyperEncoder(self.cfg)
        self.hyper_decoder = HyperDecoder(self.cfg)
        self.z_prior = FactorizedPrior(self.cfg.hyper_channels)
        self.decoder = ContextDecoder(self.cfg)

    def analysis(self, x):
        """x [B, H, W, 3] in [0, 1] -> (y [B, H/16, W/16, M], z [B, H/64, W/64, Cz])."""
        y = self.encoder(x)
        return y, self.hyper_encoder(y)

    def hyper(self, z_hat):
        """z_hat -> (mu, t) on the integer grids (float path used by training and rate tables)."""
        return self.hyper_decoder(z_hat)

    def z_likelihood(self, z_tilde):
        return self.z_prior(z_tilde)

    def synthesis(self, y_hat, levels, crop=None):
        """-> (x_base [B, H, W, 3], multi-scale features); `crop`: see ContextDecoder."""
        return self.decoder(y_hat, levels, crop)

    def __call__(self, x, levels, key, rounded_z: bool = False):
        """Training forward with noisy rate proxies; the hyper decoder reads the noisy z, or
        with `rounded_z` the rounded z it reads at coding time (straight-through).

        x [B, H, W, 3] in [0, 1]; levels int [B, H/16, W/16]. Returns a dict with x_base, bits of
        y per block [B, h, w], bits of z per image [B], and the context features {stride: map}
        the diffusion U-Net is conditioned on.
        """
        cfg = self.cfg
        kz, ky = jax.random.split(key)
        y, z = self.analysis(x)
        z_tilde = z + jax.random.uniform(kz, z.shape, z.dtype, -0.5, 0.5)
        lz = jnp.maximum(self.z_likelihood(z_tilde), cfg.likelihood_bound)
        # Noisy z into the hyper decoder by default, as Balle et al.: rounding z of a randomly
        # started encoder gives all zeros and a hyper decoder with no kernel gradients. After a
        # local-activity start (`klt.init_hyper_paths`) z is not all zeros, and `rounded_z` gives
        # the hyper decoder what it reads when coding.
        mu, t = self.hyper(z + jax.lax.stop_gradient(jnp.round(z) - z) if rounded_z else z_tilde)
        sigma = sigma_straight_through(t, levels, cfg)
        v = q.noisy_symbols(y, mu, levels, ky, cfg)
        ly = jnp.maximum(gaussian_likelihood(v, sigma), cfg.likelihood_bound)
        y_hat = q.ste_dequantize(y, mu, levels, cfg)
        x_base, features = self.synthesis(y_hat, levels)
        return {
            "x_base": x_base,
            "features": features,
            "bits_y": -jnp.sum(jnp.log2(ly), axis=-1),
            "bits_z": -jnp.sum(jnp.log2(lz), axis=(1, 2, 3)),
        }
