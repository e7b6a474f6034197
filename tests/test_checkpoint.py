import jax
import numpy as np
import pytest

from pcdc_jax import checkpoint, config, training
from pcdc_jax.errors import ModelLoadError


def test_train_state_round_trip(tmp_path):
    cfg = config.tiny()
    state = training.init_state(cfg, jax.random.PRNGKey(3))
    mngr = checkpoint.manager(tmp_path / "ck")
    checkpoint.save(mngr, 7, cfg, state=state)
    mngr.wait_until_finished()
    fresh = training.init_state(cfg, jax.random.PRNGKey(4))
    back = checkpoint.restore_state(mngr, fresh)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.restore_config(mngr) == cfg


def test_model_export_load_and_fingerprint(tmp_path, tiny_model_dir):
    m = checkpoint.load_model(tiny_model_dir)
    assert m.cfg.codec == config.tiny().codec and m.unet is None and len(m.fingerprint) == 16
    assert checkpoint.load_model(tiny_model_dir).fingerprint == m.fingerprint
    # any change of weights changes the fingerprint
    params = jax.tree_util.tree_map(lambda a: a, m.params)
    params["decoder"]["conv_in"]["bias"] = params["decoder"]["conv_in"]["bias"] + 1e-3
    assert checkpoint.fingerprint(m.cfg, params, m.tables) != m.fingerprint
    # exporting over an existing model replaces it atomically
    checkpoint.export_model(tmp_path / "m", m.cfg, m.params, m.tables)
    checkpoint.export_model(tmp_path / "m", m.cfg, m.params, m.tables)
    assert checkpoint.load_model(tmp_path / "m").fingerprint == m.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError):
        checkpoint.load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError):
        checkpoint.load_model(tmp_path / "empty")
