"""pcdc-jax: a JAX/Flax learned image codec for remote-sensing and drone imagery."""

__version__ = "0.1.0"
