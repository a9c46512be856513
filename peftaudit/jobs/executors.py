"""Executors: run jobs and hand each result back as it finishes (any order; the store and the
merge put them in plan order). inline runs them here, one after another; process runs them in a
local pool of spawned workers (spawn, not fork: CUDA cannot be initialized again in a forked
child); ray runs them as Ray tasks, on a local Ray started here or on a cluster at `address`."""

from __future__ import annotations

import os
from typing import Callable, Iterable

from peftaudit.errors import InputError, PeftauditError, one_line

from .work import run_job

BACKENDS = ("inline", "process", "ray")
OnResult = Callable[[dict, dict], None]   # (job JSON, result JSON)


def _worker_start(parent: int) -> None:
    """A pool worker leaves Ctrl-C to its parent, which stops it (no traceback from each worker),
    and ends when the parent dies, however it dies (SIGKILL by a CI timeout included): on Linux
    the kernel kills it (PR_SET_PDEATHSIG), elsewhere a thread watches the parent's process id."""
    import signal
    import sys
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the line above
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="peftaudit-parent-watch", daemon=True).start()


def _logged_job(plan_doc: dict, job_doc: dict, verbose: bool) -> dict:
    from peftaudit.log import log_stderr
    return run_job(plan_doc, job_doc, log=log_stderr if verbose else None)


def run_inline(plan_doc: dict, jobs: Iterable[dict], on_result: OnResult, *, progress: bool, verbose: bool,
               claims: dict | None = None) -> None:
    from peftaudit.log import log_stderr
    for job in jobs:
        on_result(job, run_job(plan_doc, job, progress=progress, log=log_stderr if verbose else None, claims=claims))


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker without its shutdown warning: after the pool is
    stopped on Ctrl-C or SIGTERM it would report the killed workers' queue semaphores as leaked,
    a warning that means nothing to the user (the tracker cleans them up)."""
    from multiprocessing import resource_tracker

    saved = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning:multiprocessing.resource_tracker"
    try:
        resource_tracker.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = saved


def run_process(plan_doc: dict, jobs: list[dict], on_result: OnResult, *, workers: int, verbose: bool) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    _quiet_resource_tracker()
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs))), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(),))
    try:
        pending = {pool.submit(_logged_job, plan_doc, job, verbose): job for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise PeftauditError("a worker process died (out of memory, or killed); the finished jobs "
                                         "are kept in the store: resume with --resume") from None
                on_result(job, result)
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):  # no orphans on Ctrl-C or an error
            proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)  # joins the dead workers: their queues are released
        raise
    pool.shutdown()


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, within `timeout` seconds, a Ray address nothing answers at (ray.init would wait for
    minutes): 'host:port' or 'ray://host:port' must accept a TCP connection; 'auto' is left to Ray."""
    import re
    import socket

    if address == "auto":
        return
    match = re.fullmatch(r"(?:ray://)?\[?([A-Za-z0-9.:_-]+?)\]?:([0-9]{1,5})", address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise InputError("--address", address, "a Ray cluster's address: host:port, ray://host:port or auto")
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError("--address", address, f"a running Ray cluster (nothing answers at {host}:{port} within "
                                               f"{timeout:g} s: {exc.strerror or exc})") from None


RUNTIME_ENV_VARIABLE = "PEFTAUDIT_RAY_RUNTIME_ENV"


def ray_runtime_env() -> dict | None:
    """The Ray runtime environment the jobs run in, from $PEFTAUDIT_RAY_RUNTIME_ENV (JSON, e.g.
    {"pip": ["peftaudit[peft]", "my-plugin"]} or {"py_modules": ["/path/to/my_pkg"]}): how the
    workers of a real cluster get the package and the user's plugins. None: the nodes' own Python."""
    import json

    text = os.environ.get(RUNTIME_ENV_VARIABLE)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InputError(RUNTIME_ENV_VARIABLE, text, "a JSON object (a Ray runtime environment)")
    return value


def run_ray(plan_doc: dict, jobs: list[dict], on_result: OnResult, *, workers: int, address: str | None,
            verbose: bool) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("--backend", "ray", "an installed Ray (python -m pip install -e \".[ray]\")") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"address": "local", "num_cpus": workers}  # its own Ray, whatever
        # clusters this machine has seen (a stale ray_current_cluster file would otherwise be joined)
        try:
            ray.init(include_dashboard=False, log_to_driver=verbose, configure_logging=False,
                     runtime_env=ray_runtime_env(), **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            if not address:
                raise
            raise InputError("--address", address, f"a Ray cluster this process may join (ray.init: {one_line(exc)}); "
                             "a cluster with token authentication (on by default for local clusters since Ray "
                             "2.59) needs RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or "
                             "RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head)") from None
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_logged_job)
        refs = {task.remote(plan_doc, job, verbose): job for job in jobs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                raise PeftauditError(f"Ray task {job['kind']}:{job['name']} failed ({type(exc).__name__}); the "
                                     "finished jobs are kept in the store: resume with --resume") from None
            on_result(job, result)
    except BaseException:
        if started_here:
            ray.shutdown()
        raise
    if started_here:
        ray.shutdown()


def execute(backend: str, plan_doc: dict, jobs: list[dict], on_result: OnResult, *, workers: int = 1,
            address: str | None = None, progress: bool = False, verbose: bool = True,
            claims: dict | None = None) -> None:
    """Run `jobs` on `backend`, calling on_result(job, result) in this process as each finishes.
    `claims` (inline only): Claim objects by id, used as given (workers load claims by id)."""
    if backend == "inline":
        run_inline(plan_doc, jobs, on_result, progress=progress, verbose=verbose, claims=claims)
    elif backend == "process":
        run_process(plan_doc, jobs, on_result, workers=workers, verbose=verbose)
    elif backend == "ray":
        run_ray(plan_doc, jobs, on_result, workers=workers, address=address, verbose=verbose)
    else:
        raise InputError("--backend", backend, "one of " + ", ".join(BACKENDS))
