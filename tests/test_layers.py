import jax
import numpy as np

from pcdc_jax.codec.layers import depth_to_space, space_to_depth


def test_space_depth_inverse():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 3))
    y = space_to_depth(x, 2)
    assert y.shape == (2, 4, 6, 12)
    np.testing.assert_array_equal(depth_to_space(y, 2), x)
    # Each output position holds exactly its own 2x2 input block.
    np.testing.assert_array_equal(np.asarray(y[0, 1, 2]).reshape(2, 2, 3), x[0, 2:4, 4:6])
