"""Validation on held-out splits and keep-best-k checkpoints beside keep-last-k."""

import json

import jax
import numpy as np
import pytest
from test_checkpoint_safety import small_state, target_of
from test_train import metrics, run_train

from configs import demo
from ramen_jax.data import pipeline
from ramen_jax.training import checkpointing, validation

IDENTITY = {"seed": 0, "model.embed_dim": 32}


def test_best_checkpoints_keep_the_k_lowest_and_the_last_k_stay_for_resume(tmp_path):
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 0.5, 5: 4.0}
    last = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=2, async_save=False)
    best = checkpointing.BestCheckpoints(str(tmp_path), keep=2)
    for step, loss in losses.items():
        meta = {"next_step": step, "identity": IDENTITY}
        last.save(step, small_state(step), meta)
        best.save(step, small_state(step), meta, loss)
    assert best.steps() == [2, 4]  # the two lowest validation losses
    best.close()
    last.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4, 5]
    reopened = checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep=2, async_save=False)
    state, meta = reopened.restore_newest_intact(target_of(small_state()), IDENTITY)
    reopened.close()
    assert meta["next_step"] == 5  # resume reads the newest, whatever its validation loss
    np.testing.assert_array_equal(
        state.params["decoder"]["bias"], small_state(5).params["decoder"]["bias"]
    )
    again = checkpointing.BestCheckpoints(str(tmp_path), keep=2)  # a resumed run ranks on
    again.save(6, small_state(6), {"next_step": 6}, 0.7)
    assert again.steps() == [4, 6]
    saved = json.loads((tmp_path / "best" / "6" / "meta" / "metadata").read_text())
    assert saved["val_loss"] == 0.7
    again.close()


def test_a_resumed_run_validating_a_saved_best_step_again_goes_on(tmp_path):
    """Stopped after the best save of step 10 and resumed from step 5: step 10 is validated
    and offered again; the state is the same, so the saved one stays and the run goes on."""
    best = checkpointing.BestCheckpoints(str(tmp_path), keep=1)
    best.save(10, small_state(10), {"next_step": 10}, 1.0)
    best.close()
    resumed = checkpointing.BestCheckpoints(str(tmp_path), keep=1)
    resumed.save(10, small_state(10), {"next_step": 10}, 1.0)
    resumed.save(20, small_state(20), {"next_step": 20}, 0.5)
    assert resumed.steps() == [20]
    resumed.close()


def test_settings_refuse_a_negative_keep_best():
    with pytest.raises(checkpointing.CheckpointSettingsError, match="keep_best"):
        checkpointing.validate_settings({"every_steps": 1, "keep": 1, "keep_best": -1})


def test_validation_is_due_every_n_steps_or_every_epoch():
    config = demo.get_config()
    assert not validation.due(config, 10)  # off in the demo
    config.eval.every_steps = 3
    assert [s for s in range(1, 10) if validation.due(config, s)] == [3, 6, 9]
    config.eval.every_steps, config.steps_per_epoch = 0, 4
    assert [s for s in range(1, 10) if validation.due(config, s)] == [4, 8]


def test_validation_batches_are_the_same_every_time_and_cover_the_split():
    config = demo.get_config("tiny")
    datasets = validation.held_out_datasets(config, batch_shards=1)
    make = lambda: pipeline.ValidationBatches(  # noqa: E731
        datasets, batches_per_dataset=0, seed=1, mask_ratio=0.75
    )
    first, second = make(), make()
    source = datasets[0].source
    assert len(first) == len(source) // datasets[0].global_batch == 3
    for index in range(len(first)):
        a, b = first(index), second(index)
        samples_a, samples_b = (x.batch.replace(layout=None) for x in (a, b))
        jax.tree.map(np.testing.assert_array_equal, samples_a, samples_b)
        np.testing.assert_array_equal(a.batch.layout.token_valid, b.batch.layout.token_valid)
    capped = pipeline.ValidationBatches(datasets, batches_per_dataset=2, seed=1, mask_ratio=0.75)
    assert len(capped) == 2


def test_training_validates_logs_and_keeps_the_best(tmp_path):
    settings = (
        "--config.total_steps=4",
        "--config.preview_every_steps=0",
        "--config.eval.every_steps=2",
        "--config.checkpoint.keep_best=1",
        "--config.checkpoint.every_steps=4",
    )
    run_train(tmp_path, "configs/demo.py:tiny", *settings)
    logged = [m for m in metrics(tmp_path) if "val/loss" in m]
    assert [m["step"] for m in logged] == [2, 4]
    for m in logged:
        assert np.isfinite(m["val/loss"]) and m["val/bigearthnet/loss"] == m["val/loss"]
        assert any(key.startswith("val/bigearthnet/loss/") for key in m)
    best_step = min(logged, key=lambda m: m["val/loss"])["step"]
    best = sorted(int(p.name) for p in (tmp_path / "best").iterdir() if p.name.isdigit())
    assert best == [best_step]
    assert (tmp_path / "checkpoints" / "4").is_dir()  # the newest, for resuming
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
