"""BaryIR data: degradations, TFDS builders (array_record, no TensorFlow), the grain training pipeline and
the evaluation reader. Imports nothing of `baryir_jax.models` or `baryir_jax.train`.

Main entry points:
* `pipeline.make_train_pipeline(data_dir, tasks, ...)`: the training batches (grain `IterDataset`);
* `pipeline.entry_counts(data_dir, tasks, ...)` / `pipeline.oversampled_counts(tasks, sizes, ...)`: entries per
  source after oversampling (for λ);
* `sources.load_eval_split(data_dir, dataset, split)` / `sources.load_eval_task(data_dir, task, collection)`:
  whole evaluation images;
* `to_mesh.host_batch_to_global(batch, mesh)`; `prepare.prepare(...)` and the `baryir-prepare` command;
* `degradations`: the official noise and the synthetic degradations.
"""

from baryir_jax.data import degradations
from baryir_jax.data.pipeline import (
    default_multipliers,
    entry_counts,
    load_mixture,
    make_mixture,
    make_train_pipeline,
    oversampled_counts,
)
from baryir_jax.data.report import DataError
from baryir_jax.data.sources import (
    EVAL_TASKS,
    EvalExample,
    SourceSpec,
    load_eval_split,
    load_eval_task,
    resolve_sources,
)

__all__ = [
    "DataError",
    "EVAL_TASKS",
    "EvalExample",
    "SourceSpec",
    "default_multipliers",
    "degradations",
    "entry_counts",
    "load_eval_split",
    "load_eval_task",
    "load_mixture",
    "make_mixture",
    "make_train_pipeline",
    "oversampled_counts",
    "resolve_sources",
]
