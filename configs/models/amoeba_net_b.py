"""AmoebaNet-B model config: (N=18, F=512) is the ~557M-parameter model of GPipe / Ngiam et al."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Defaults follow tensorflow/tpu `amoeba_net` (BN decay 0.9997, drop-path keep 0.7, aux scale 0.4)."""
    config = ml_collections.ConfigDict()
    config.name = "amoeba_net_b"
    config.num_classes = 1001
    config.image_size = 299
    config.num_cells = 18  # normal cells over three stacks
    config.filters = 512  # F; must stay divisible by 4 after width_multiplier
    config.width_multiplier = 1.0  # scales F (rounded to a multiple of 4) and the stem conv
    config.aux_head = False
    config.aux_scale = 0.4  # channel scale of the aux head
    config.aux_loss_weight = 0.4  # used by the trainer when aux_head is on
    config.drop_path_keep_prob = 0.7  # reached at the end of training; 1.0 turns drop-path off
    config.bn_momentum = 0.9997  # Fine-tuning (Kornblith et al.) sets max(1 - 10 / steps_per_epoch, 0.9).
    config.dropout_rate = 0.5
    config.dtype = "float32"  # compute dtype; parameters stay float32
    config.remat = False  # activation checkpointing per cell
    # pmap axis for cross-device BatchNorm ("" = per-device statistics); the trainer sets it per run.
    config.bn_axis_name = ""
    return config
