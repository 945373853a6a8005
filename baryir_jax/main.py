"""``baryir-train`` / ``python -m baryir_jax.main``: train BaryIR from a config file.

    baryir-train --config=configs/demo.py --workdir=runs/demo
    baryir-train --config=configs/three_task.py --workdir=runs/3d --config.data.data_dir=DATA \
        --config.data.batch_size=24 --config.dtype=bfloat16

The resolved config is written to WORKDIR/config.json; rerunning the same command resumes from the newest
checkpoint in WORKDIR. Multi-process jobs (TPU pods, several GPU hosts) call ``jax.distributed.initialize``:
automatically on TPU VMs and under SLURM, or with --coordinator_address/--num_processes/--process_id.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # clu's writers import TensorFlow; keep its start-up quiet

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, the exported model and evaluation.")
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "yes", "no"],
    "Call jax.distributed.initialize: 'auto' = when a coordinator is configured (flags, "
    "JAX_COORDINATOR_ADDRESS, SLURM, TPU pod slice).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process GPU/CPU jobs).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process job.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process job.")
flags.mark_flags_as_required(["config", "workdir"])


def _want_distributed() -> bool:
    if FLAGS.distributed != "auto":
        return FLAGS.distributed == "yes"
    if FLAGS.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))  # a multi-host TPU slice


class _QuietLibraries(logging.Filter):
    """INFO from our code and from clu (scalars, steps/s, ETA); only warnings from orbax, grain, jax, …"""

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return record.name.startswith("baryir_jax") or "/clu/" in path or "/baryir_jax/" in path


def _setup_logging():
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.getLogger("baryir_jax").setLevel(logging.INFO)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _setup_logging()
    import jax

    if _want_distributed():
        kwargs = {
            k: v
            for k, v in dict(
                coordinator_address=FLAGS.coordinator_address,
                num_processes=FLAGS.num_processes,
                process_id=FLAGS.process_id,
            ).items()
            if v is not None
        }
        jax.distributed.initialize(**kwargs)
    from baryir_jax.config import ConfigError
    from baryir_jax.data.report import DataError
    from baryir_jax.train.loop import NonFiniteLossError, train_and_evaluate

    try:
        summary = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except NonFiniteLossError as e:
        logging.error("%s", e)
        print(f"baryir-train: {e}", file=sys.stderr)
        sys.exit(3)
    except (ConfigError, DataError) as e:  # a config value that cannot work, data not prepared: say what to do
        print(f"baryir-train: {e}", file=sys.stderr)
        sys.exit(2)
    if summary.get("preempted"):
        sys.exit(0)


def _check_config_flags(argv) -> str | None:
    """A clear message, instead of a traceback, for a config file that is missing or refuses its argument
    (e.g. an unknown variant) and for --config.KEY overrides that name no field of the config."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    keys = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    keys += [a[len("--noconfig.") :] for a in argv if a.startswith("--noconfig.")]
    if not path:
        return None
    import importlib.util

    file, _, arg = path.partition(":")
    if not os.path.isfile(file):
        return f"--config={path}: no such file"
    try:
        spec = importlib.util.spec_from_file_location("baryir_config_check", file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        config = mod.get_config(arg or None)
    except ValueError as e:
        return f"--config={path}: {e}"
    except Exception as e:  # noqa: BLE001  (a broken config file: say which and what, without the traceback)
        return f"--config={path}: {type(e).__name__}: {e}"
    for key in keys:
        node, done = config, []
        for part in key.split("."):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if part not in fields:
                where = ".".join(done) or "the config"
                return (
                    f"unknown config key '{key}': {where} has no field '{part}' (its fields: "
                    f"{', '.join(sorted(fields))})"
                )
            node, done = node[part], done + [part]
    return None


def run():  # console-script entry point
    problem = _check_config_flags(sys.argv[1:])
    if problem:
        print(f"baryir-train: {problem}", file=sys.stderr)
        sys.exit(2)
    app.run(main)


if __name__ == "__main__":
    run()
