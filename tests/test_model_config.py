"""The one model config: built from ``config.model`` with unknown keys refused, defaults that
leave every existing config's model unchanged, old ``model_config.json`` files readable, and a
builder that needs no global Flax setting."""

import dataclasses
import json

import flax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from configs import base, demo
from ramen_jax import sensors
from ramen_jax.model import build, weights
from ramen_jax.model import config as model_config_lib
from ramen_jax.model.config import ModelConfig

KINDS = (sensors.OPTICAL, sensors.SAR)


def test_an_unknown_model_key_is_refused_naming_the_closest_known_one():
    section = ml_collections.ConfigDict({"embed_dimm": 64, "depth": 2})
    with pytest.raises(model_config_lib.ModelConfigError) as error:
        model_config_lib.from_config(section, KINDS)
    assert str(error.value) == "config model: no field 'embed_dimm' (did you mean 'embed_dim'?)"
    with pytest.raises(model_config_lib.ModelConfigError, match="no field 'zzz'; known: "):
        model_config_lib.from_config({"zzz": 1}, KINDS)
    # kinds come from the datasets, never from config.model
    with pytest.raises(model_config_lib.ModelConfigError, match="no field 'kinds'"):
        model_config_lib.from_config({"kinds": ["optical"]}, KINDS)


def test_a_bad_value_or_dtype_is_one_model_config_error():
    with pytest.raises(model_config_lib.ModelConfigError, match="model.dtype='float16'"):
        model_config_lib.compute_dtype({"dtype": "float16"})
    with pytest.raises(model_config_lib.ModelConfigError, match="unknown attention"):
        model_config_lib.from_config({"attention_impl": "flash"}, KINDS, "cpu")
    assert model_config_lib.compute_dtype({}) == jnp.float32
    assert model_config_lib.compute_dtype(base.get_config().model) == jnp.bfloat16


@pytest.mark.parametrize("get_config", [base.get_config, demo.get_config], ids=["base", "demo"])
def test_every_config_model_key_reaches_the_model_config_unchanged(get_config):
    """Nothing in config.model is dropped or replaced by a default on the way (the dtype is the
    run's); the original's L-TAE attention dropout of 0.1 stays in the paper config."""
    section = get_config().model
    config = model_config_lib.from_config(section, KINDS, "cpu")
    for key, value in section.items():
        if key == "attention_impl":
            assert config.attention_impl == "chunked"  # "" = the CPU default
        elif key != "dtype":
            assert getattr(config, key) == value, key
    expected = 0.1 if get_config is base.get_config else 0.0
    assert config.ltae_attention_dropout == expected


def test_absent_keys_take_the_dataclass_default_and_attention_resolves_per_platform():
    config = model_config_lib.from_config({"embed_dim": 64, "num_heads": 4}, KINDS)
    assert config.depth == ModelConfig().depth and config.attention_impl == ""
    assert config.kinds == tuple(sorted(KINDS))
    assert config.for_platform("tpu").attention_impl == "splash"
    assert config.for_platform("gpu").attention_impl == "cudnn"
    explicit = dataclasses.replace(config, attention_impl="einsum")
    assert explicit.for_platform("tpu").attention_impl == "einsum"


def test_a_model_config_json_that_stored_null_attention_still_loads():
    """Files written while the dataclass default was None hold ``"attention_impl": null``."""
    old = json.loads(json.dumps(weights.config_to_dict(ModelConfig(kinds=KINDS), False)))
    old["attention_impl"] = None
    config, has_decoder = weights.config_from_dict(old)
    assert config == ModelConfig(kinds=KINDS) and not has_decoder
    with pytest.raises(weights.ModelCheckpointError, match=r"unknown ModelConfig field\(s\)"):
        weights.config_from_dict({**old, "embed_dimm": 3})


def test_the_builder_needs_no_global_flax_flag():
    """Building leaves Flax's global eager-sharding flag alone and creates variables without
    eager sharding (no mesh is needed), whatever the flag says."""
    config = ModelConfig(
        kinds=KINDS,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
    )
    before = flax.config.flax_always_shard_variable
    assert before is True  # Flax's default: importing ramen_jax.model left it alone
    model = build.build(config, seed=3)
    assert flax.config.flax_always_shard_variable is True
    params = nnx.state(model, nnx.Param)
    assert all(not v.eager_sharding for _, v in nnx.to_flat_state(params))
    assert model.config.attention_impl == "chunked"  # resolved for this CPU host
    again = build.build(config, seed=3)
    flat, flat_again = build.flat_state(model), build.flat_state(again)
    assert all(jnp.array_equal(flat[p], flat_again[p]) for p in flat)
    shapes = build.flat_shapes(build.abstract(config))
    assert shapes == {p: tuple(v.shape) for p, v in flat.items()}
