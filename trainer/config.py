"""Trainer hyper-parameters: the papers' recipes as two `ml_collections` configs.

Pre-training follows Ngiam et al. (Inception-v3: batch 1024, 2M steps, 20k-step linear warm-up then
cosine, SGD with Nesterov momentum); fine-tuning follows Ngiam et al. / Kornblith et al. (batch 256,
20k steps, 2k warm-up, SGD with momentum, BatchNorm momentum max(1 - 10/s, 0.9)). Durations are given
in steps, or in epochs when `steps` is 0 (epochs of the training shard set's records).
"""

from __future__ import annotations

import ml_collections


def _common() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.parallelism = "jit"  # "pmap" | "jit" (jit over a Mesh with NamedSharding: the pjit path)
    c.fsdp = False  # jit only: shard parameters/optimizer state over the mesh instead of replicating
    c.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated under fsdp
    c.global_batch_size = 256
    c.steps = 0  # total training steps; when 0, `epochs` sets the duration
    c.epochs = 0.0
    c.warmup_steps = 0  # when 0 and warmup_epochs > 0, warm-up is set in epochs
    c.warmup_epochs = 0.0
    c.optimizer = "sgd"  # "sgd" | "rmsprop" (TF1 semantics, as the tensorflow/tpu recipes) | "adam"
    c.learning_rate = 0.1  # peak learning rate after warm-up, for the global batch
    c.end_learning_rate = 0.0  # value the cosine decays to
    c.momentum = 0.9
    c.nesterov = False
    c.rmsprop_decay = 0.9
    c.rmsprop_epsilon = 1.0
    c.weight_decay = 0.0
    c.weight_decay_mode = "l2"  # "l2" (added to the gradient) | "decoupled" (lr * wd * w, after momentum)
    c.label_smoothing = 0.0
    c.aux_loss_weight = 0.0  # weight of the auxiliary head's loss (used when the model has one)
    c.multi_label_loss = "softmax"  # "softmax" (targets = normalised multi-hot) | "sigmoid" (per-label BCE)
    # Multiply each example's loss by its `weight` (`image/weight`). Off: the pipeline turns it on only
    # for a weighted-view selection method (`weighted_loss`); resampled shards train unweighted.
    c.use_example_weights = False
    # "supervised" (the labels) | "contrastive" (MoCo-style, Chakraborty et al.'s MoCo-v2 pre-training
    # of a filtered subset: the head is a `projection_dim` projection, the key encoder is the weight
    # EMA (ema_decay = the momentum), InfoNCE over two augmentations with the batch's other keys as
    # negatives (no queue); labels unused)
    c.objective = "supervised"
    c.contrastive_temperature = 0.2
    c.projection_dim = 128
    c.ema_decay = 0.0  # 0 disables the weight EMA
    c.eval_with_ema = False
    c.image_size = 299
    c.augment = True
    c.flip = True  # random horizontal flip (off for data a mirror image relabels, e.g. glyphs)
    c.min_crop_area = 0.1  # Inception crop: area fraction sampled in [min_crop_area, 1]
    c.compute_dtype = "float32"  # "float32" | "bfloat16" (params stay float32)
    c.bn_momentum = "model"  # "model" (the model config's value) | "auto" (max(1 - 10/s, 0.9)) | a float
    c.freeze_backbone = False  # train only params["head"]; the backbone runs in inference mode
    c.reinit_head = "auto"  # "auto" (when num_classes differ) | "always" | "never"; for init_from only
    c.init_from_ema = True  # take the EMA weights of the init_from run when it has them
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 100
    c.eval_batch_size = 256
    c.seed = 0
    c.worker_count = 0  # grain worker processes for the input pipeline
    return c


def pretrain_config() -> ml_collections.ConfigDict:
    """Inception-v3 source pre-training (Ngiam et al.; Inception recipe weight decay / smoothing)."""
    c = _common()
    c.global_batch_size = 1024
    c.steps = 2_000_000
    c.warmup_steps = 20_000
    c.optimizer = "sgd"
    c.nesterov = True
    c.momentum = 0.9
    c.learning_rate = 0.4  # 0.1 per 256 examples, linearly scaled to batch 1024 (Goyal et al.)
    c.weight_decay = 4e-5
    c.label_smoothing = 0.1
    c.aux_loss_weight = 0.4
    c.ema_decay = 0.9999
    c.eval_with_ema = True
    c.reinit_head = "auto"
    c.checkpoint_every_steps = 5000
    return c


def finetune_config() -> ml_collections.ConfigDict:
    """Target fine-tuning with a fresh head (Kornblith et al. / Ngiam et al.)."""
    c = _common()
    c.global_batch_size = 256
    c.steps = 20_000
    c.warmup_steps = 2_000
    c.optimizer = "sgd"
    c.nesterov = False
    c.momentum = 0.9
    c.learning_rate = 0.01
    c.weight_decay = 1e-4
    c.label_smoothing = 0.0
    c.aux_loss_weight = 0.4
    c.bn_momentum = "auto"
    c.reinit_head = "always"
    c.checkpoint_every_steps = 1000
    return c


def run_section(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of a job's trainer section (`pretrain`, ...) for one run: without `seeds`, the job's list
    of seeds (a run has one, `seed`)."""
    run = ml_collections.ConfigDict(section.to_dict())
    if "seeds" in run:
        del run["seeds"]
    return run
