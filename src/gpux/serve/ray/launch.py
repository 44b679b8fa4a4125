"""``gpux serve --ray``: start (or join) Ray, deploy gpux's app on Ray Serve, wait, clean up.

This process is Ray's driver; it holds no model. Without ``--address`` it starts a Ray instance of its
own on this machine (no dashboard, a small object store: gpux passes requests, not tensors, through it)
and stops it on exit; with one it joins that cluster, deploys the ``gpux`` application, and deletes it
on exit (the cluster stays up).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from gpux.errors import GpuxError, UsageError

if TYPE_CHECKING:  # the deployment module imports ray: only once --ray has checked it is there
    from gpux.serve.ray.deployment import ReplicaSpec

#: Ray's shared-memory object store when gpux starts Ray itself: requests and answers only (Ray's minimum is
#: 75 MiB; its default, 30% of RAM, would reserve GiBs of /dev/shm for nothing).
OBJECT_STORE_BYTES = 256 * 1024 * 1024
APP_NAME = "gpux"


def import_ray() -> tuple[Any, Any]:
    """``ray`` and ``ray.serve``, or a UsageError that says how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Serve ({exc.name} is not installed)",
                         hint="pip install 'gpux[ray]'") from exc
    return ray, serve


def parse_autoscale(text: str) -> tuple[int, int]:
    """``--autoscale MIN:MAX`` -> (min, max) replicas."""
    lo, sep, hi = text.partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise UsageError(f"--autoscale {text!r} is not MIN:MAX", hint="e.g. --autoscale 1:4")
    mn, mx = int(lo), int(hi)
    if mx < 1 or mn > mx:
        raise UsageError(f"--autoscale {text}: need 0 <= MIN <= MAX and MAX >= 1", hint="e.g. --autoscale 1:4")
    return mn, mx


def scaling(replicas: int | None, autoscale: str | None, serving: dict[str, Any],
            per_replica: int) -> dict[str, Any]:
    """Ray deployment options for the replica count: flags first, then gpux.yml ``serving``, then 1 replica.

    ``per_replica`` (max batch x instances) is the default ``target_ongoing_requests``: a replica with that
    many requests in flight fills one batch per instance. A replica takes at most twice its target, so the
    batcher still sees a full batch queued behind the running one, and Ray's routers queue the rest.
    """
    if replicas is not None and autoscale is not None:
        raise UsageError("--replicas and --autoscale both given", hint="pass one: a fixed count or MIN:MAX")
    target = float(serving.get("target_ongoing_requests") or per_replica)
    bounds: tuple[int, int] | None = None
    if autoscale is not None:
        bounds = parse_autoscale(autoscale)
    elif replicas is None and (serving.get("min_replicas") is not None or serving.get("max_replicas") is not None):
        mn = int(serving.get("min_replicas") or 1)
        bounds = (mn, int(serving.get("max_replicas") or max(mn, 1)))
    options: dict[str, Any] = {"max_ongoing_requests": max(1, int(2 * target))}
    if bounds is None:
        options["num_replicas"] = replicas or 1
    else:
        options["autoscaling_config"] = {"min_replicas": bounds[0], "max_replicas": bounds[1],
                                         "initial_replicas": max(bounds[0], 1), "target_ongoing_requests": target}
    return options


def serve_on_ray(spec: ReplicaSpec, *, host: str, port: int, address: str | None, options: dict[str, Any],
                 verbose: bool = False, on_ready: Any = None) -> None:
    """Deploy and block until SIGINT/SIGTERM; ``on_ready(url, seconds)`` once the application runs."""
    started = time.perf_counter()
    ray, serve = import_ray()
    from gpux.serve.ray.deployment import GpuxReplica
    from gpux.serve.ray.proxy import NODE_ENV

    # Ray's processes inherit these when this process starts Ray; a cluster's nodes need them at `ray start`.
    # Usage stats off: nothing leaves the machine unless asked.
    for key, value in NODE_ENV.items():
        os.environ.setdefault(key, value)
    local = address is None
    most = options.get("num_replicas") or options["autoscaling_config"]["max_replicas"]
    # A replica reserves the CPUs its --threads use; without --threads it reserves 1 and its sessions use
    # every core of its node (gpux's default), so one replica per node is what fits (docs/scale.md).
    cpus = spec.threads or 1
    common = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}
    if not local:
        _reachable(address or "")
    try:
        if local:  # on one machine, replicas share its cores (as --instances do): Ray may count them over
            ray.init(include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                     num_cpus=max(os.cpu_count() or 1, most * cpus), **common)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UsageError(f"cannot join the Ray cluster at {address}: {exc}",
                         hint="start it with `ray start --head` on the head node, or fix --address") from None
    try:
        # No access log line per request (the plain server writes none either: a log line costs as much as
        # a small request's routing on a 2-core machine); --verbose turns them on.
        quiet = {"enable_access_log": verbose, "log_level": "INFO" if verbose else "WARNING"}
        logging.getLogger("ray.serve").setLevel(logging.INFO if verbose else logging.WARNING)  # gpux's banner says it
        serve.start(proxy_location="HeadOnly" if local else "EveryNode",
                    http_options={"host": host, "port": port}, logging_config=quiet)
        deployment = serve.deployment(GpuxReplica).options(
            name=APP_NAME, ray_actor_options={"num_cpus": cpus, "runtime_env": {"env_vars": {
                "GPUX_HOME": spec.store_root}}}, **options)
        try:
            serve.run(deployment.bind(spec), name=APP_NAME, route_prefix="/", blocking=False, logging_config=quiet)
        except Exception as exc:  # noqa: BLE001 - Ray's many failure types: one gpux error naming what to check
            raise GpuxError(f"the Ray Serve deployment did not start: {str(exc).splitlines()[0] if str(exc) else exc}",
                            hint="run with --verbose for the replicas' logs; every node needs gpux installed "
                                 f"and the store at {spec.store_root}") from None
        if on_ready is not None:
            on_ready(f"http://{'[' + host + ']' if ':' in host else host}:{port}", time.perf_counter() - started)
        _wait_for_signal()
    finally:
        _stop(ray, serve, local)


def _reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing listens on: one line now, not Ray's endless retries."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():  # "auto" and friends: Ray resolves them and fails fast itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                         hint="start it with `ray start --head` on the head node, or fix --address") from None


def _wait_for_signal() -> None:
    """Block until Ctrl-C or SIGTERM (how `kill`, systemd and Kubernetes stop a process)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(ray: Any, serve: Any, local: bool) -> None:
    """Local Ray: shut Serve and Ray down. A joined cluster: delete the gpux application, leave the cluster."""
    try:
        if local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    except Exception:  # noqa: BLE001 - best effort on the way out; the cluster reports its own state
        pass
    finally:
        ray.shutdown()
