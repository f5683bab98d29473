r"""Demo pretraining on the six real BigEarthNet patches bundled with the package.

  python -m ramen_jax.train --config configs/demo.py --workdir /tmp/ramen_demo

A small RAMEN (width 96, 4 blocks) learns to reconstruct masked Sentinel-2 (10/20/60 m as three
modalities) and Sentinel-1 patches at effective GSDs 40-120 m, on a 2-core CPU in a few
minutes, writing checkpoints, TensorBoard events and reconstruction previews to --workdir.
The training setup is the paper's (configs/base.py) apart from size, learning rate (changed every
step) and length.
"""

from configs import base


def get_config(arg=None):
    c = base.get_config()
    c.model.update(
        embed_dim=96,
        depth=4,
        num_heads=4,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        dtype="float32",
        ltae_attention_dropout=0.0,
    )
    c.data.datasets = base.demo_datasets(per_device_batch=8, gsds=(40, 60, 80, 120))
    c.data.num_workers = 0
    c.data.max_buckets_per_dataset = 4  # few shapes: compiling dominates on a small CPU
    # The six patches have no held-out split: no validation (tests turn it on to check the loop,
    # reading the same patches).
    c.eval.every_steps = -1
    c.total_steps = 300
    c.steps_per_epoch = 10
    # 300 steps of 10-step "epochs": a learning rate changed every step, not in 30 jumps
    c.optim.update(lr=1e-3, start_lr=1e-5, end_lr=1e-5, warmup_epochs=3, schedule_interval="step")
    c.checkpoint.update(every_steps=100, keep=2)
    c.log_every_steps = 25
    c.preview_every_steps = 100
    if arg == "tiny":  # for tests: a few seconds per step at most
        c.model.update(
            embed_dim=32, depth=1, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2
        )
        c.data.datasets = base.demo_datasets(per_device_batch=2, gsds=(60, 120))
        c.data.max_buckets_per_dataset = 2
        c.total_steps, c.log_every_steps, c.preview_every_steps = 6, 1, 3
        c.checkpoint.update(every_steps=5, keep=10)
    elif arg == "short":  # the same model, 40 steps on coarser grids: the suite's learning check
        c.data.datasets = base.demo_datasets(per_device_batch=4, gsds=(60, 80, 120))
        c.data.max_buckets_per_dataset = 1
        c.total_steps, c.log_every_steps, c.preview_every_steps = 40, 10, 20
        c.optim.warmup_epochs = 1
        c.checkpoint.update(every_steps=20)
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use tiny or short")
    return c
