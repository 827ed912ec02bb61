"""Scale-out: pipelines run on Celery workers (prefork pool, Redis broker) while the node stays the
source of truth (``processing.executor: celery``).

* :mod:`~dicomnode.distributed.settings` — effective settings from the config, start-up checks;
* :mod:`~dicomnode.distributed.app` — the Celery app factory and the attempt task;
* :mod:`~dicomnode.distributed.message` — the small JSON message of one attempt;
* :mod:`~dicomnode.distributed.staging` — the shared job folder, manifests, commit by rename;
* :mod:`~dicomnode.distributed.task` — the worker's side of an attempt;
* :mod:`~dicomnode.distributed.leases` — the ``job_leases`` table in the node's database;
* :mod:`~dicomnode.distributed.broker` — events, queue depth and message presence on Redis;
* :mod:`~dicomnode.distributed.executor` — :class:`CeleryExecutor`, the node's side;
* :mod:`~dicomnode.distributed.status` — jobs per state and per worker for ``dicomnode status``.
"""
