import pytest

from pcdc_jax import config


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_json_round_trip(name):
    cfg = config.preset(name)
    back = config.Config.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.codec.level_exponents, tuple)


def test_override_and_errors():
    cfg = config.tiny().override(["train.lmbda=0.5", "codec.level_exponents=[2, 1, 0, -1, -2]"])
    assert cfg.train.lmbda == 0.5 and cfg.codec.level_exponents == (2, 1, 0, -1, -2)
    with pytest.raises(ValueError):
        config.tiny().override(["train.nope=1"])
    with pytest.raises(ValueError):
        config.Config.from_dict({"codec": {"bogus": 1}})
    with pytest.raises(ValueError):
        config.preset("huge")


def test_levels_are_ordered_coarse_to_fine():
    steps = config.base().codec.level_steps()
    assert len(steps) == 5 and all(a > b for a, b in zip(steps, steps[1:]))
