"""Shared configuration defaults: the official BaryIR settings (``baryir-official.md`` §3–§4).

The files in ``configs/`` start from :func:`base_config` and change what their run needs. Every field can be
overridden on the command line: ``--config.optim.lr=2e-4``, ``--config.data.tasks='("derain","dehaze")'``.
"""

from __future__ import annotations

import ml_collections

# Official `--de_type` names of the 3D and 5D runs.
TASKS_3D = ("derain", "dehaze", "denoise_15", "denoise_25", "denoise_50")
TASKS_5D = ("derain", "dehaze", "lowlight", "denoise_25", "deblur")


class ConfigError(ValueError):
    """A configuration value that cannot work (the message names the field and what to set instead)."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # compute dtype of the restorer: 'float32' or 'bfloat16' (parameters stay float32)

    # BaryNet (official sizes). bary_blocks = -1: T_θ has num_blocks[3] blocks, as in the official code.
    c.model = ml_collections.ConfigDict(
        dict(
            dim=48,
            num_blocks=(4, 6, 6, 8),
            num_refinement_blocks=4,
            heads=(1, 2, 4, 8),
            ffn_expansion_factor=2.66,
            bary_blocks=-1,
            residual_scale=0.8,
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            collection="benchmark",  # 'benchmark' (prepared TFDS data sets) or 'embedded' (ships with the install)
            data_dir="",  # where baryir-prepare wrote the data sets
            tasks=TASKS_3D,
            multipliers="",  # '' = the official oversampling; or 'derain=360,dehaze=1,...'
            patch_size=128,
            batch_size=3,  # global batch, split over all devices
            num_workers=0,  # grain worker processes per host
            prefetch=2,
        )
    )

    # The restorer's loss: l1_weight·L1 + mean_i λ_k(i)[rms(z_i − b_i) + γ(ort_i + con_i) − f_k(i)(b_i)].
    c.loss = ml_collections.ConfigDict(
        dict(
            l1_weight=1e4,  # official --Sigma
            gamma=0.05,  # 0.05 in the single-GPU trainer, 0.02 in the official multi-GPU one
            tau=0.07,  # contrastive temperature
            kappa=10.0,  # congruence penalty weight
            congruence="penalty",  # 'penalty' (official) | 'exact' | 'centered' | 'none'
            penalty_points="last",  # 'last' sample of the batch (official) | 'batch'
            potential_update="two_step",  # 'two_step' (official single-GPU) | 'summed' (official multi-GPU)
            skip_absent_potentials=True,  # potentials with no sample in the batch keep params and RMSprop state
            inner_map_steps=1,  # restorer updates per potential update (official: 1)
        )
    )

    # RMSprop as PyTorch's (decay 0.99, eps 1e-8 outside the square root) for both players.
    c.optim = ml_collections.ConfigDict(
        dict(lr=1e-4, potentials_lr=1e-4, decay_every_epochs=50, decay_factor=0.1, rmsprop_decay=0.99, eps=1e-8)
    )
    # Large-batch options (docs/large_batch_study.md); these defaults are the official behaviour. Both players'
    # LRs are multiplied by 1 ('none'), B/reference_batch ('linear') or its square root ('sqrt'), B the global
    # batch; a linear warm-up over warmup_steps training steps (0 = none); gradients clipped to a global L2 norm
    # before RMSprop, per player (0 = off).
    c.optim.update(dict(lr_scaling="none", reference_batch=3, warmup_steps=0, clip_norm=0.0, potentials_clip_norm=0.0))

    c.train = ml_collections.ConfigDict(
        dict(
            num_epochs=56,
            num_steps=-1,  # > 0 overrides num_epochs
            grad_accum_steps=1,  # micro-batches per step (the global batch must divide by it)
            log_every=100,
            checkpoint_every=2000,
            max_to_keep=3,
            eval_every=-1,  # steps between validations; -1 = once per epoch, 0 = never
            image_every=-1,  # steps between TensorBoard image summaries; -1 = with validation
            init_from="",  # a model checkpoint (baryir-convert output or an export) to fine-tune from
            export_model=True,  # write a model checkpoint (workdir/model) at the end
        )
    )

    # Validation during training and the evaluation after it.
    c.eval = ml_collections.ConfigDict(
        dict(
            tasks=("derain",),  # official: Rain100L test after every epoch
            max_images=-1,  # -1 = all
            after_training=False,  # run the per-task evaluation table when training ends
        )
    )
    return c
