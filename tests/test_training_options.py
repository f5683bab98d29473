"""Training options and guards, in process on the tiny demo config: parameter freezing,
the cross-modal contrastive term, gradient accumulation, init_from, NaN handling, and the
errors users get for inputs the model cannot take."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from ramen_jax import sensors
from ramen_jax.data import pipeline
from ramen_jax.model import build as build_lib
from ramen_jax.model import loss as loss_lib
from ramen_jax.model import weights as model_weights
from ramen_jax.model.projectors import projection_matrix
from ramen_jax.training import reporting, sharding
from ramen_jax.training import step as step_lib
from ramen_jax.training.loop import load_init_from
from ramen_jax.training.trainer import Trainer


def tiny_config(**optim):
    config = demo.get_config("tiny")
    config.optim.update(**optim)
    return config


@functools.cache
def trainer_and_batch(trainable=()):
    trainer = Trainer(tiny_config(trainable=list(trainable)), "/tmp/unused")
    batches = pipeline.StepBatches(trainer.datasets, seed=0, mask_ratio=0.75)
    step = next(s for s in range(50) if len(batches.draw(s).kept) >= 2)
    host = batches(step)
    return trainer, host, sharding.device_batch(host.batch, trainer.mesh, trainer.rules)


def flat(tree):
    return {k: np.asarray(v) for k, v in build_lib.flatten_dict(jax.device_get(tree)).items()}


def test_frozen_parameters_stay_put():
    trainer, host, batch = trainer_and_batch(("encoder/spectral_projector/.*", "decoder/blocks/.*"))
    state = trainer.init_state()
    before = flat(state.params)
    after = flat(trainer.step_fn(host.dataset)(state, batch)[0].params)
    moved = {"/".join(map(str, k)) for k in before if not np.array_equal(before[k], after[k])}
    assert moved and all(
        m.startswith(("encoder/spectral_projector/", "decoder/blocks/")) for m in moved
    )
    assert any(m.startswith("decoder/blocks/") for m in moved)


def test_trainable_patterns_must_leave_something():
    with pytest.raises(ValueError, match="no trainable parameter"):
        Trainer(tiny_config(frozen=[".*"]), "/tmp/unused")


def _grads(trainer, state, batch, specs, options, noise):
    return step_lib.accumulated_grads(
        trainer.graphdef, state, batch, specs, noise, jax.random.key(1), options
    )


def test_contrastive_term_aligns_two_modality_groups():
    trainer, host, batch = trainer_and_batch()
    state = trainer.init_state()
    specs = trainer.specs[host.dataset]
    noise = jax.random.uniform(jax.random.key(0), (2, batch.layout.length))
    plain = step_lib.StepOptions()
    with_term = step_lib.StepOptions(contrastive_weight=1.0, contrastive_temperature=0.1)
    metrics, _, grads = jax.jit(functools.partial(_grads, trainer, specs=specs, options=with_term))(
        state, batch, noise=noise
    )
    _, _, base_grads = jax.jit(functools.partial(_grads, trainer, specs=specs, options=plain))(
        state, batch, noise=noise
    )
    value = float(metrics["contrastive"])
    assert np.isfinite(value) and value > 0  # two samples: InfoNCE of 2-way matching
    delta = flat(jax.tree.map(jnp.subtract, grads, base_grads))
    assert any(np.abs(v).max() > 0 for k, v in delta.items() if k[:2] == ("encoder", "blocks"))
    assert all(np.all(v == 0) for k, v in delta.items() if k[0] == "decoder")
    kept_rank = np.asarray(batch.layout.kept_rank)
    one_rank = jnp.asarray(np.where(kept_rank < len(specs), 0, kept_rank))
    one_kept = batch.replace(layout=batch.layout.replace(kept_rank=one_rank))
    single, _, _ = jax.jit(functools.partial(_grads, trainer, specs=specs, options=with_term))(
        state, one_kept, noise=noise
    )
    assert float(single["contrastive"]) == 0.0  # one modality group only: no pair to align


def test_gradient_accumulation_averages_micro_batches():
    trainer, host, batch = trainer_and_batch()
    state = trainer.init_state()
    specs = trainer.specs[host.dataset]
    noise = jax.random.uniform(jax.random.key(0), (2, batch.layout.length))
    accum = step_lib.StepOptions(grad_accum=2)
    _, _, grads = jax.jit(functools.partial(_grads, trainer, specs=specs, options=accum))(
        state, batch, noise=noise
    )
    grads_of = jax.jit(
        lambda p, s, b, n, k: step_lib.loss_and_grads(
            trainer.graphdef, p, s, b, specs, n, dropout_key=k
        )[2]
    )
    halves = []
    for i in range(2):
        part = batch.map_samples(lambda x, i=i: x[i : i + 1])
        key = jax.random.fold_in(jax.random.key(1), i)
        halves.append(grads_of(state.params, state.batch_stats, part, noise[i : i + 1], key))
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *halves)
    for k, v in flat(grads).items():  # float32: same sums in another order
        ref = flat(mean)[k]
        assert np.abs(v - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-3), k


def test_init_from_loads_what_the_checkpoint_has(tmp_path):
    trainer, _, _ = trainer_and_batch()
    source = trainer.init_state()
    params = jax.tree.map(lambda x: np.asarray(x) + 1.0, jax.device_get(source.params))
    encoder_only = {"encoder": params["encoder"]}
    stats = {"encoder": jax.device_get(source.batch_stats)["encoder"]}
    model_weights.save_model(
        tmp_path / "enc", trainer.model_config, encoder_only, stats, has_decoder=False
    )
    reporter = reporting.Reporter(str(tmp_path), 1, 0)
    state = load_init_from(str(tmp_path / "enc"), trainer.init_state(), reporter)
    got, fresh = flat(state.params), flat(source.params)
    for key, value in got.items():
        expected = flat(params)[key] if key[0] == "encoder" else fresh[key]
        np.testing.assert_array_equal(value, expected)


def test_non_finite_loss_names_step_and_modality():
    with pytest.raises(reporting.NonFiniteLossError, match=r"step 7.*s1"):
        reporting.check_finite(
            7,
            {"loss": np.float32(np.nan), "loss/s1": np.float32(np.inf), "loss/s2": np.float32(1.0)},
        )
    reporting.check_finite(8, {"loss": np.float32(1.0)})


def test_nan_inputs_are_zeroed_like_the_original():
    trainer, host, batch = trainer_and_batch()
    state = trainer.init_state()
    specs = trainer.specs[host.dataset]
    model = build_lib.merge_model(trainer.graphdef, state.params, state.batch_stats)
    name = specs[0].name
    pixels = np.asarray(batch.pixels[name]).copy()
    pixels[:, :, :3, :3] = np.nan
    zeros = pixels.copy()
    zeros[:, :, :3, :3] = 0
    outs = [
        model.encoder(batch.replace(pixels={**batch.pixels, name: jnp.asarray(p)}), specs)
        for p in (pixels, zeros)
    ]
    assert np.all(np.isfinite(outs[0]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_single_channel_modality_has_a_finite_loss():
    """The original's unbiased per-pixel variance is NaN for C = 1; we target the raw pixel."""
    pixels = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 4, 4, 1)), jnp.float32)
    recon = pixels * 0.5
    weights = jnp.ones((2, 1, 4, 4))
    value = loss_lib.modality_loss(recon, pixels, weights)
    np.testing.assert_allclose(value, np.mean(np.square(np.asarray(pixels) * 0.5)), rtol=1e-6)
    two = jnp.concatenate([pixels, -pixels], axis=-1)  # C = 2 still normalises per pixel
    target = loss_lib.normalised_target(two)
    expected = 1 / np.sqrt(2 + 1e-6 / np.square(np.asarray(pixels)))
    np.testing.assert_allclose(np.abs(target), np.broadcast_to(expected, target.shape), rtol=1e-4)


def test_modalities_the_model_cannot_take_give_one_clear_error():
    trainer, _, _ = trainer_and_batch()  # demo model: optical + sar, no DEM projector
    model = build_lib.merge_model(
        trainer.graphdef,
        *jax.device_get((trainer.init_state().params, trainer.init_state().batch_stats)),
    )
    dem = sensors.modality("dem", "dem", ["dsm"], 10, 8)
    with pytest.raises(sensors.ModalityError, match="no dem_projector"):
        projection_matrix(model.encoder, dem, jnp.float32)
    with pytest.raises(sensors.ModalityError, match="unknown channel key"):
        sensors.modality("s1", "sar", ["vv_asc"], 10, 8)
    with pytest.raises(sensors.ModalityError, match="unknown kind"):
        sensors.modality("x", "hyperspectral", [500], 10, 8)
