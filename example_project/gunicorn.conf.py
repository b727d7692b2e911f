"""Gunicorn settings for running the Weckr server in production (``make serve``).

    gunicorn -c example_project/gunicorn.conf.py example_project.wsgi

Threaded workers (``gthread``): each request has a thread of its own, so a cap check
(on the path of every LLM call your users make) never queues behind a batch being
ingested in the same worker, and keep-alive connections from the SDKs stay open
between requests. Each thread keeps its database connection (``CONN_MAX_AGE``), so
plan for ``WEB_CONCURRENCY * WECKR_THREADS`` connections per machine.

Environment: ``WECKR_BIND`` (default 127.0.0.1:8000), ``WEB_CONCURRENCY`` (worker
processes, default one per CPU), ``WECKR_THREADS`` (threads per worker, default 8),
``WECKR_ACCESS_LOG`` (``-`` for stdout; off by default).
"""

from __future__ import annotations

import os

bind = os.environ.get("WECKR_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 2)
worker_class = "gthread"
threads = int(os.environ.get("WECKR_THREADS", "8"))
# SDKs keep their connection between flushes (HttpBackend sends every second or so).
keepalive = 75
# The largest batch the API accepts is ingested in well under a second; a request
# still running after 30 s is stuck, and its worker is replaced.
timeout = 30
graceful_timeout = 30
# Recycle workers now and then (jittered, so not all at once) to bound slow leaks.
max_requests = 20_000
max_requests_jitter = 2_000
accesslog = os.environ.get("WECKR_ACCESS_LOG") or None
errorlog = "-"
# The app is loaded in each worker after the fork: no database connection, thread or
# socket is shared between processes.
preload_app = False
# No runtime control socket under $HOME (gunicorn 24+; older versions ignore this).
control_socket_disable = True
