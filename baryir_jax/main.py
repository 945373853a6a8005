"""``baryir-train`` / ``python -m baryir_jax.main``: train BaryIR from a config file.

    baryir-train --config=configs/demo.py --workdir=runs/demo
    baryir-train --config=configs/three_task.py --workdir=runs/3d --config.data.data_dir=DATA \
        --config.data.batch_size=24 --config.dtype=bfloat16

Every config field is checked before anything is built. Rerunning the same command resumes from the newest
checkpoint in WORKDIR that restores and is finite; settings that a resumed run must keep are compared with the
checkpoint's first (``baryir_jax.train.workdir``). The resolved config is written to WORKDIR/config.json (and
WORKDIR/config_history/) once the run is known to start or resume. Multi-process jobs (TPU pods, several GPU
hosts) call ``jax.distributed.initialize``: automatically on multi-host TPU slices and in SLURM job steps that srun
launched with several tasks, or with --coordinator_address/--num_processes/--process_id.

The config is read by :func:`baryir_jax.config.load` (``FILE[:variant]`` and ``--config.KEY=VALUE`` overrides, as
every command reads it). Flag names take underscores or hyphens alike (``--distributed_timeout`` =
``--distributed-timeout``).

Exit codes (:mod:`baryir_jax.errors`): 0 done (or preempted by SIGTERM after saving); 2 a bad flag, a config file,
variant, key or value that cannot work, data not prepared, settings a resumed run must keep, or a workdir whose
checkpoints all fail to restore (one line on stderr saying what to do); 3 training diverged (NaN/inf; nothing
non-finite was saved); 4 the processes of a multi-process job did not meet (one line naming the coordinator, and
--distributed=no to train as one process); 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # clu's writers import TensorFlow; keep its start-up quiet

from absl import app, flags  # noqa: E402

from baryir_jax import cli  # noqa: E402
from baryir_jax.errors import EXIT_DISTRIBUTED, DistributedError, UsageError  # noqa: E402

PROG = "baryir-train"
FLAGS = flags.FLAGS
flags.DEFINE_string(
    "config",
    None,
    "Training configuration file configs/*.py[:variant]; override any field with --config.KEY=VALUE.",
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, the exported model and evaluation.")
flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "yes", "no"],
    "Call jax.distributed.initialize: 'auto' = when a coordinator is configured (flags, "
    "JAX_COORDINATOR_ADDRESS), in a SLURM job step srun launched with several tasks, or on a multi-host TPU "
    "slice; 'no' = train as one process.",
)
flags.DEFINE_integer(
    "distributed_timeout",
    300,
    "Seconds the processes of a multi-process job wait for each other at the coordinator before giving up "
    "(exit code 4).",
    lower_bound=1,
    upper_bound=7 * 24 * 3600,  # a week; beyond, the watchdog's timestamp overflows
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process GPU/CPU jobs).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process job.", lower_bound=1)
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process job.", lower_bound=0)
flags.mark_flags_as_required(["config", "workdir"])
flags.register_multi_flags_validator(
    ["num_processes", "process_id"],
    lambda f: f["num_processes"] is None or f["process_id"] is None or f["process_id"] < f["num_processes"],
    message="--process_id must be below --num_processes (processes are numbered 0 .. N-1)",
)


log = logging.getLogger("baryir_jax.main")


def _int_env(env, name: str) -> int | None:
    v = env.get(name, "")
    return int(v) if v.strip().isdigit() else None


def _tasks_on_this_node(env) -> int | None:
    """This node's task count in the SLURM step (SLURM_STEP_TASKS_PER_NODE, e.g. '2(x3),1', and SLURM_NODEID)."""
    spec, node = env.get("SLURM_STEP_TASKS_PER_NODE", ""), _int_env(env, "SLURM_NODEID")
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        n, _, reps = part.partition("(x")
        if not n.isdigit() or (reps and not reps.rstrip(")").isdigit()):
            return None
        counts += [int(n)] * (int(reps.rstrip(")")) if reps else 1)
    return counts[node] if node is not None and node < len(counts) else None


def _distributed_plan(env=os.environ) -> tuple[dict | None, str]:
    """(keyword arguments for ``jax.distributed.initialize``, or None to train as one process; a warning).

    SLURM: only processes that srun launched as the tasks of a job step (SLURM_STEP_ID and SLURM_PROCID set, the
    step's task count in SLURM_STEP_NUM_TASKS) form a multi-process job. ``baryir-train`` started directly in a
    batch script or an salloc shell of a several-task allocation is one process, not task 0 of N that waits for
    N − 1 others that will never come.
    """
    asked = (FLAGS.num_processes or 1) > 1 or (FLAGS.process_id or 0) > 0  # a multi-process job asked for
    if FLAGS.distributed == "no":
        if asked:
            raise UsageError(
                f"--distributed=no contradicts --num_processes={FLAGS.num_processes} --process_id={FLAGS.process_id}"
                ": leave those out to train as one process, or drop --distributed=no"
            )
        return None, ""
    coordinator = FLAGS.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    given = dict(coordinator_address=coordinator, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    kwargs = {k: v for k, v in given.items() if v is not None}
    if coordinator:
        if len(kwargs) == 3:  # all given: every device of this host (JAX's SLURM detection would keep one GPU)
            kwargs["cluster_detection_method"] = "deactivate"
        return kwargs, ""
    in_step = all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID"))
    step_tasks = (_int_env(env, "SLURM_STEP_NUM_TASKS") or _int_env(env, "SLURM_NTASKS")) if in_step else None
    if in_step and step_tasks and step_tasks > 1:
        kwargs.setdefault("num_processes", step_tasks)
        kwargs.setdefault("process_id", _int_env(env, "SLURM_PROCID"))
        if kwargs["process_id"] is not None and not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
            raise UsageError(
                f"--process_id={kwargs['process_id']} is not one of this job step's {kwargs['num_processes']} "
                "processes (0 .. N-1); leave it out: srun sets SLURM_PROCID for every task"
            )
        if (_tasks_on_this_node(env) or 1) == 1:  # one task per node drives all of its devices
            kwargs["local_device_ids"] = None
            kwargs["cluster_detection_method"] = "slurm"
        return kwargs, ""
    multi_host_tpu = env.get("TPU_WORKER_HOSTNAMES", "").count(",")
    if asked and not (FLAGS.distributed == "yes" or multi_host_tpu):  # a job nobody can coordinate
        raise UsageError(
            f"--num_processes={FLAGS.num_processes} --process_id={FLAGS.process_id} need the job's coordinator: give "
            "--coordinator_address=HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS) to every process, or leave "
            "them out to train as one process"
        )
    allocated = _int_env(env, "SLURM_NTASKS") or 1
    if "SLURM_JOB_ID" in env and allocated > 1 and FLAGS.distributed == "auto":
        return None, (
            f"this SLURM allocation has {allocated} tasks, but baryir-train was not launched by srun as its tasks "
            "(no SLURM_STEP_ID/SLURM_PROCID): training as one process. To train on every task, run it with srun "
            "(launch/slurm_multinode.sbatch does)"
        )
    if FLAGS.distributed == "yes" or multi_host_tpu:
        return kwargs, ""
    return None, ""


def _fill_in(kwargs: dict, timeout_s: int) -> dict:
    """The coordinator, process count and id JAX would detect (to say where we wait); unchanged on failure."""
    if all(k in kwargs for k in ("coordinator_address", "num_processes", "process_id")):
        return kwargs
    try:
        from jax._src import clusters

        method = kwargs.get("cluster_detection_method")
        addr, n, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            kwargs.get("coordinator_address"),
            kwargs.get("num_processes"),
            kwargs.get("process_id"),
            kwargs.get("local_device_ids"),
            method if method != "deactivate" else None,
            timeout_s,
        )
    except Exception:  # noqa: BLE001  (a private JAX helper: initialize() detects again and says what is missing)
        return kwargs
    out = dict(kwargs, coordinator_address=addr, num_processes=n, process_id=pid)
    if "local_device_ids" not in kwargs:
        out["local_device_ids"] = local
    out.pop("cluster_detection_method", None)
    if out.get("local_device_ids") is None:
        out["cluster_detection_method"] = "deactivate"  # everything is given: detect nothing more
    return {k: v for k, v in out.items() if v is not None or k == "local_device_ids"}


def _initialize_distributed(jax, kwargs: dict, timeout_s: int) -> None:
    """``jax.distributed.initialize`` that says where it waits, and fails with one line (exit 4) instead of a
    traceback or JAX's abort after its own timeout."""
    import threading

    kwargs = _fill_in(kwargs, timeout_s)
    addr = kwargs.get("coordinator_address") or "the auto-detected coordinator"
    n = kwargs.get("num_processes") or "all"
    pid = kwargs.get("process_id", "?")
    log.info(
        "waiting for %s processes at %s (this is process %s; giving up after %d s, --distributed_timeout)",
        n,
        addr,
        pid,
        timeout_s,
    )
    fix = (
        "start every process of the job with the same coordinator (srun, launch/slurm_multinode.sbatch, "
        "launch/tpu_pod.sh), raise --distributed_timeout, or train as one process with --distributed=no"
    )
    met = threading.Event()

    def watchdog():  # JAX's client aborts the process (SIGABRT) when its own timeout passes
        if not met.wait(timeout_s):
            print(
                f"{PROG}: the {n} processes of this job did not all reach the coordinator {addr} within "
                f"{timeout_s} s (this is process {pid}); {fix}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(EXIT_DISTRIBUTED)

    threading.Thread(target=watchdog, name="baryir-distributed-timeout", daemon=True).start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s + 60)
    except Exception as e:  # noqa: BLE001  (bad or missing settings, a port in use: one line)
        met.set()
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(f"jax.distributed.initialize failed at {addr}: {cause}; {fix}") from None
    met.set()


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


def _check_workdir(workdir: str) -> None:
    """A local ``--workdir`` that cannot hold checkpoints is one line (exit 2) before anything is built: an existing
    file, a path below a file, or a folder nobody can write in (probed with a real write). Remote workdirs
    (``gs://…``) are left to the checkpoint library."""
    if "://" in workdir:
        return
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir} exists and is not a folder; choose a new folder or a previous run's")
    problem = cli.output_write_problem(workdir, workdir, ".baryir-train-probe-", "is a file, not a folder", "--workdir")
    if problem:
        raise UsageError(problem)


def main(argv, overrides=()):
    """The training run of the parsed flags and the ``--config.KEY=VALUE`` ``overrides``; raises
    :class:`~baryir_jax.errors.BaryIRError` (exit codes in the module docstring)."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    _setup_logging()
    from baryir_jax.config import load, validate

    config = load(FLAGS.config, overrides)  # the file, its variant, every override key and value
    validate(config)  # every field, before any process waits for others or anything compiles
    kwargs, warning = _distributed_plan()  # a process flag that cannot work: exit 2 before the workdir is touched
    _check_workdir(FLAGS.workdir)
    import jax

    if warning:
        log.warning("%s", warning)
    if kwargs is not None:
        _initialize_distributed(jax, kwargs, int(FLAGS.distributed_timeout))
    from baryir_jax.config import ConfigError
    from baryir_jax.data.report import DataError
    from baryir_jax.train.checkpointing import NonFiniteLossError
    from baryir_jax.train.loop import train_and_evaluate

    try:
        train_and_evaluate(config, FLAGS.workdir)  # done, or preempted after saving: 0 either way
    except NonFiniteLossError as e:
        logging.error("%s", e)
        raise
    except DataError as e:  # the data sets config.data.data_dir names are not prepared: a config problem here
        raise ConfigError(str(e)) from None
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, its errors as one line (exit 2) instead of absl's usage text."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        raise UsageError(next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)) from None


def _main(argv=None) -> int:
    from baryir_jax.config import split_overrides

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = split_overrides(argv)
    rest = cli.canonical_flags(rest)
    asked_help = any(a in HELP_FLAGS for a in rest[: rest.index("--") if "--" in rest else len(rest)])
    rest = ["--help" if a == "-h" else a for a in rest]
    try:
        app.run(lambda a: main(a, overrides), argv=[PROG, *rest], flags_parser=_parse_flags)
    except SystemExit as e:
        if asked_help and e.code in (None, 0, 1):  # absl prints the help, then exits 1: help asked for is success
            return 0
        raise
    return 0


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "--helpxml")


run = cli.console(PROG, _main)  # console-script entry point


if __name__ == "__main__":
    run()
