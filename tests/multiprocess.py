"""Launching the processes of one multi-process training job in the tests (a local coordinator on a free port)."""

import socket
import subprocess


def free_port() -> int:
    """A TCP port nothing listens on now (for the job's coordinator at 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(cmd: list[str], env: dict, num_processes: int = 2, timeout: float = 1800) -> list[tuple[int, str, str]]:
    """Run ``cmd`` as the ``num_processes`` processes of one job (``--coordinator_address``, ``--num_processes``,
    ``--process_id`` appended) and wait for all: [(return code, stdout, stderr)] in process order."""
    port = free_port()
    procs = [
        subprocess.Popen(
            cmd + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num_processes)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
