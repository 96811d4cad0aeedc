"""``vidcache farm``: one prompt file over the workers of a Ray cluster (an optional extra).

``driver`` schedules (longest job first, to whichever worker frees up), retries the jobs of workers
that die, handles Ctrl-C and SIGTERM and writes ``run.json``; ``worker`` is the Ray actor that loads
the model once and renders jobs through ``vidcache gen``'s own ``plan_run`` and ``Runner``;
``schedule`` is the bookkeeping both rest on, without Ray. Nothing here imports Ray at import time,
and ``vidcache gen`` never imports this package.
"""
