"""Test setup: 4 simulated CPU devices (before JAX loads), tiny models, sample images."""
import os

from importlib.metadata import version  # noqa: E402

# Tests compile far more than they run: XLA's CPU backend at -O0 without the fusion emitters
# compiles the tiny models' steps about 6x faster (53 s -> 8 s for the train step on 2 cores) and
# runs them nearly as fast. The second flag exists in jaxlib 0.10, where CI runs; an unknown flag
# would abort XLA, so other versions keep their defaults.
_FAST_COMPILE = (" --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
                 if version("jaxlib").startswith("0.10.") else "")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _FAST_COMPILE +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session and the training scripts it starts, so the
# same program (e.g. the tiny train step in several subprocesses) is compiled once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pcdc-test-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.flatten_util  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

logging.getLogger("absl").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_MODEL = ROOT / "pcdc_jax" / "models" / "default"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny-preset model after a few training steps, exported like a shipped model."""
    from pcdc_jax import config, training

    cfg = config.tiny().override(["train.diffusion_weight=0"])     # codec only: fast to compile
    state = training.init_state(cfg, jax.random.PRNGKey(0))
    step = training.jit_train_step(cfg)
    x = jax.numpy.asarray(sample_image()[:64, :128].astype(np.float32) / 255.0).reshape(2, 64, 64, 3)
    for i in range(3):
        state, _ = step(state, x, jax.random.PRNGKey(i))
    d = tmp_path_factory.mktemp("models") / "tiny"
    training.export(d, cfg, state)
    return d


@pytest.fixture(scope="session")
def tiny_diffusion_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model plus an untrained but non-degenerate U-Net: fresh parameters with every leaf
    perturbed (the zero-initialised output layers included), so each step changes the image."""
    from pcdc_jax import checkpoint
    from pcdc_jax.diffusion import unet

    m = checkpoint.load_model(tiny_model_dir)
    params = perturbed(unet.init_params(m.cfg.diffusion, unet.feature_channels(m.cfg.codec),
                                        jax.random.PRNGKey(1)))
    d = tmp_path_factory.mktemp("models") / "tiny_diffusion"
    checkpoint.export_model(d, m.cfg, m.params, m.tables, unet=jax.device_get(params))
    return d


@pytest.fixture(scope="session")
def tiny_diffusion(tiny_diffusion_model_dir):
    from pcdc_jax import api
    return api.load(tiny_diffusion_model_dir)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from pcdc_jax import api
    return api.load(tiny_model_dir)


@pytest.fixture(scope="session")
def default_runtime():
    if not (DEFAULT_MODEL / "checkpoints").exists() and not any(DEFAULT_MODEL.glob("*")):
        pytest.skip("no shipped default model")
    from pcdc_jax import api
    return api.load(DEFAULT_MODEL)


@jax.jit
def perturbed(params, scale=0.05):
    """Every leaf plus scale * standard normal noise (one draw for the whole flattened tree: one
    random op per leaf costs a minute of compiling on these machines)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return unravel(flat + scale * jax.random.normal(jax.random.PRNGKey(2), flat.shape))


def load_script(name: str):
    """eval/<name>.py as a module, to run its main() or helpers in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"eval_{name}", ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env(devices: int = 4) -> dict:
    """The environment for a child process (a script, the CLI): this session's XLA flags (fast
    compilation) with `devices` simulated CPU devices."""
    flags = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=4",
                                            f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": flags}


def free_port() -> int:
    """A free local TCP port (for a jax.distributed coordinator)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_image(name: str = "coffee.png") -> np.ndarray:
    from pcdc_jax.data.images import read_image
    return read_image(SAMPLES / name)


@pytest.fixture
def coffee():
    return sample_image()
