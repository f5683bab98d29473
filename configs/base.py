r"""The paper's pretraining run: ViT-B RAMEN on FLAIR-HUB, MMEarth and WorldStrat.

  python -m ramen_jax.train --config configs/base.py --workdir gs://BUCKET/ramen_base

Datasets are read from ``data_prep`` outputs (``--config.data.datasets.mmearth.source.path=...``).
Variants: ``configs/base.py:debug`` keeps this file's training setup but shrinks the model and
reads the bundled demo data, so it runs on a 2-core CPU; ``configs/base.py:cpu_step`` keeps the
full ViT-B model on the demo data (one real step on CPU, for checks); ``:tiny`` and ``:small``
keep everything but use ViT-Ti / ViT-S sized models (see ``MODEL_SIZES``); ``:v6e`` and
``:v5e`` keep the recipe and set the memory knobs that fit those TPU chips
(``CHIP_MEMORY_KNOBS``). Any field can be overridden with ``--config.a.b=value``.

Facts from the original setup (docs/training.md has the recipe table, with each value's file
in the original repository): AdamW lr 1.5e-4, weight decay 0.05, betas (0.9, 0.999), clip 1.0;
linear warmup from 1e-5 over 20 epochs, cosine to 1e-6 at epoch 300, the learning rate
changed once per epoch as the original's scheduler (``optim.schedule_interval="step"`` changes
it every step); bf16 compute; 16 GPUs with per-device batches flairhub 4, mmearth 32,
worldstrat 2. Datasets are mixed per epoch as the original's loader does
(``data.mixing="epoch"``): every full global batch of every dataset once per epoch, each step
drawing uniformly among the datasets not yet exhausted in this epoch. An epoch is therefore
the sum of the datasets' full global batches: ``steps_per_epoch=0`` derives it from the
prepared splits and the device count, ``total_steps=0`` makes the run ``epochs`` long (300, as
the original's experiment config; its shipped SLURM launcher passes ``max_epochs=100``).
"""

import ml_collections

from ramen_jax.data import catalog


def modality(kind, channels, gsd, side, time_series=False, max_time_steps=0, temporal_dropout=0.0):
    return ml_collections.ConfigDict(
        {
            "kind": kind,
            "channels": list(channels),
            "gsd": float(gsd),
            "side": side,
            "time_series": time_series,
            # dates a sample keeps at most (longer series sub-sampled); 0: no cap, as the
            # original, whose batches pad every series to the batch's longest
            "max_time_steps": max_time_steps,
            # share of a series' dates dropped at random at every load (the original: 0.3 for
            # FLAIR-HUB's Sentinel series, none for WorldStrat)
            "temporal_dropout": float(temporal_dropout),
        }
    )


def catalog_modalities(modalities, temporal_dropout=None, sides=None):
    """Modality entries of ``ramen_jax.data.catalog``'s ``modalities`` (a dataset's name, or a
    tuple of them), with no cap on time steps, ``temporal_dropout`` ({modality: share}, default
    none) and the catalog's sides unless ``sides`` ({modality: side}) says otherwise."""
    if isinstance(modalities, str):
        modalities = catalog.modalities_of(modalities)
    temporal_dropout, sides = temporal_dropout or {}, sides or {}
    return {
        m.name: modality(
            m.kind,
            m.channels,
            m.gsd,
            sides.get(m.name, m.side),
            m.time_series,
            0,
            temporal_dropout.get(m.name, 0.0),
        )
        for m in modalities
    }


def paper_datasets():
    d = ml_collections.ConfigDict()
    d.flairhub = ml_collections.ConfigDict(
        {
            "source": {
                "type": "records",
                "path": "data/flairhub",
                "split": "train",
                "norm_path": None,
            },
            "weight": 1.0,
            "per_device_batch": 4,
            "effective_gsds": [float(g) for g in range(3, 21)],
            "modalities": catalog_modalities("flairhub", {"s2": 0.3, "s1_des": 0.3}),
        }
    )
    d.mmearth = ml_collections.ConfigDict(
        {
            "source": {
                "type": "records",
                "path": "data/mmearth",
                "split": "train",
                "norm_path": None,
                # share of the split read (the original: a random 0.6 of MMEarth)
                "partition": 1.0,
            },
            "weight": 1.0,
            "per_device_batch": 32,
            "effective_gsds": [float(g) for g in range(20, 101, 10)],
            "modalities": catalog_modalities("mmearth"),
        }
    )
    d.worldstrat = ml_collections.ConfigDict(
        {
            "source": {
                "type": "records",
                "path": "data/worldstrat",
                "split": "train",
                "norm_path": None,
            },
            "weight": 1.0,
            "per_device_batch": 2,
            "effective_gsds": [float(g) for g in range(5, 21)],
            "modalities": catalog_modalities("worldstrat"),
        }
    )
    return d


def demo_datasets(per_device_batch=8, crop_fraction=0.6, gsds=(30.0, 40.0, 60.0, 80.0)):
    """The six bundled BigEarthNet patches: S2 at 10/20/60 m as three modalities, plus S1."""
    d = ml_collections.ConfigDict()
    d.bigearthnet = ml_collections.ConfigDict(
        {
            "source": {"type": "demo", "crop_fraction": crop_fraction},
            "weight": 1.0,
            "per_device_batch": per_device_batch,
            "effective_gsds": [float(g) for g in gsds],
            "modalities": catalog_modalities(
                catalog.BIGEARTHNET_DEMO, sides=catalog.demo_crop_sides(crop_fraction)
            ),
        }
    )
    return d


# Smaller encoders for ablations and benchmarks (``configs/base.py:tiny`` / ``:small``): the
# paper's data and training setup with ViT-Ti / ViT-S widths and a proportionally smaller decoder.
MODEL_SIZES = {
    "tiny": dict(
        embed_dim=192, depth=12, num_heads=3, decoder_dim=128, decoder_depth=4, decoder_heads=4
    ),
    "small": dict(
        embed_dim=384, depth=12, num_heads=6, decoder_dim=256, decoder_depth=8, decoder_heads=8
    ),
}


# Chips with less memory than the paper's 80 GB GPUs (``configs/base.py:v6e`` / ``:v5e``): the
# same recipe, global batches included, with the memory knob that makes the largest step of
# every dataset fit with at least 15% of the chip's memory to spare, as compiled ahead of time
# for v6e:2x2x2 and v5e:4x4 (docs/scaling.md has the measurements). Gradient accumulation
# splits each global batch into micro-batches (BatchNorm statistics are then per micro-batch);
# rematerialisation recomputes each block's activations in the backward pass (more compute,
# the least memory: on v5e it needs less than accumulation and remat together).
CHIP_MEMORY_KNOBS = {
    "v6e": {"optim.grad_accum": 2},
    "v5e": {"model.remat": True},
}


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.epochs = 300
    c.total_steps = 0  # 0: epochs x steps_per_epoch
    c.steps_per_epoch = 0  # 0: the datasets' full global batches per epoch, summed

    c.model = ml_collections.ConfigDict(
        {
            "embed_dim": 768,
            "depth": 12,
            "num_heads": 12,
            "mlp_ratio": 4.0,
            "decoder_dim": 512,
            "decoder_depth": 8,
            "decoder_heads": 16,
            "mask_ratio": 0.75,
            "block_norm_eps": 1e-6,
            "ltae_attention_dropout": 0.1,
            # "" = the default of the mesh's platform: splash (Pallas kernel) on TPU, cudnn on
            # GPU, chunked einsum on CPU; "xla" / "cudnn" / "einsum" / "chunked" / "splash"
            # force one (ramen_jax/model/attention.py, docs/performance.md).
            "attention_impl": "",
            "dtype": "bfloat16",
            # Recompute every transformer block's activations (encoder, decoder, the decoder's
            # attention over dates) in the backward pass instead of storing them.
            "remat": False,
            "scan_layers": False,
        }
    )

    c.data = ml_collections.ConfigDict()
    c.data.datasets = paper_datasets()
    # step shapes per dataset: token buckets x time buckets (ramen_jax/data/buckets.py)
    c.data.max_buckets_per_dataset = 16
    c.data.max_time_buckets_per_dataset = 4
    c.data.num_workers = 8  # worker processes preparing batches
    c.data.num_threads = 2  # batches prepared concurrently per process
    c.data.prefetch = 4  # ready batches waiting for the step
    # "mask": padded time slots are masked out of every statistic and softmax; "original":
    # they take part as zero frames dated 0, as the original's collate function makes them.
    c.data.time_padding = "mask"
    # A records source at a URL (gs://...) is copied here first, once per host, and reused on
    # restart (ramen_jax/data/staging.py); mount larger-than-disk datasets and give the path.
    c.data.cache_dir = "~/.cache/ramen_jax/datasets"
    # "epoch": every full batch of every dataset once per epoch, each step drawn among the
    # datasets not yet exhausted (with their weights), as the original; "weights": each step
    # draws a dataset i.i.d. with the weights (ramen_jax/data/mixing.py).
    c.data.mixing = "epoch"

    c.optim = ml_collections.ConfigDict(
        {
            "lr": 1.5e-4,
            "start_lr": 1e-5,
            "end_lr": 1e-6,
            "warmup_epochs": 20,
            "schedule_interval": "epoch",  # "epoch": lr changed once per epoch; "step": every step
            "weight_decay": 0.05,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "clip": 1.0,
            "grad_accum": 1,
            "trainable": [],
            "frozen": [],
        }
    )

    c.contrastive = ml_collections.ConfigDict({"weight": 0.0, "temperature": 0.1})

    # Mesh axes and logical -> mesh rules: model code only names logical axes. ``dcn_data``: the
    # number of TPU slices (multi-slice, linked by the data-centre network) that the ``data`` axis
    # spans; each slice holds data/dcn_data x fsdp x tensor devices (docs/scaling.md).
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 1})
    c.sharding_rules = [
        ["batch", ["data", "fsdp"]],
        ["embed", "fsdp"],
        ["dec_embed", "fsdp"],
        ["mlp", "tensor"],
        ["qkv", "tensor"],
        ["heads", "tensor"],
        ["embed_out", None],
    ]

    # Multi-process runs: every process checks that all run the same step shape and agrees on
    # one stop step after a signal, at the first step, at each new shape and every_steps.
    c.host_sync = ml_collections.ConfigDict({"every_steps": 10, "timeout_s": 300.0})

    # keep: the newest checkpoints (resume); keep_best: besides them, the validated states with
    # the lowest validation loss in DIR/best (0: off), as the original keeps its best by val loss
    c.checkpoint = ml_collections.ConfigDict(
        {"every_steps": 1000, "keep": 3, "async_save": True, "keep_best": 3}
    )
    # Validation on the held-out splits (ramen_jax/training/validation.py): every_steps > 0
    # steps, 0 once per epoch (the original), < 0 never; batches per dataset (0: the whole
    # split); a fixed seed for the GSD, modalities and masks of every validation batch.
    c.eval = ml_collections.ConfigDict({"every_steps": 0, "split": "val", "batches": 0, "seed": 1})
    c.init_from = ""
    c.log_every_steps = 50
    c.preview_every_steps = 2000
    # A workdir URL (gs://...) gets metrics.jsonl and TensorBoard events at a logged step at
    # most this often, and at the end (ramen_jax/training/reporting.py).
    c.workdir_sync_seconds = 30.0
    # Persistent XLA cache: "" = JAX's configured one, else WORKDIR/compilation_cache; a path
    # (local or gs://); "off".
    c.compilation_cache_dir = ""
    c.precompile = False  # compile every step shape (dataset x token x time bucket) first
    # XLA:CPU maps every compiled program into the process; at most this many mappings (0: the
    # host's vm.max_map_count on CPU, no limit elsewhere), least recently used steps dropped.
    c.program_map_limit = 0

    if arg == "debug":
        c.model.update(
            embed_dim=64,
            depth=2,
            num_heads=4,
            decoder_dim=64,
            decoder_depth=1,
            decoder_heads=4,
            dtype="float32",
        )
        c.data.datasets = demo_datasets(per_device_batch=4)
        c.data.num_workers = 0
        c.eval.every_steps = -1  # the demo patches have no held-out split
        c.total_steps, c.steps_per_epoch = 20, 2
        c.optim.warmup_epochs = 1
        c.checkpoint.every_steps = 10
        c.log_every_steps, c.preview_every_steps = 5, 10
    elif arg == "cpu_step":
        c.data.datasets = demo_datasets(per_device_batch=1)
        c.data.num_workers = 0
        c.eval.every_steps = -1  # the demo patches have no held-out split
        c.model.dtype = "float32"
        c.total_steps, c.steps_per_epoch = 1, 1
        c.optim.warmup_epochs = 0
        c.checkpoint.every_steps = 1
        c.log_every_steps, c.preview_every_steps = 1, 0
    elif arg in MODEL_SIZES:
        c.model.update(MODEL_SIZES[arg])
    elif arg in CHIP_MEMORY_KNOBS:
        for field, value in CHIP_MEMORY_KNOBS[arg].items():
            group, name = field.split(".")
            c[group][name] = value
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use debug, cpu_step, tiny, small, v6e or v5e")
    return c
