"""The mixplane server (``mixplane serve``): catalog and jobs over HTTP, wire protocol in
``mixplane.protocol``. ``app`` holds the HTTP layer, ``jobs`` the job store and its
checkpoints, ``metrics`` the Prometheus counters; least privilege is ``roles`` (every route's
least role), ``auth`` (tokens, dashboard sessions, the gate), ``roots`` (where registration may
read), ``audit`` (the audit log) and ``security`` (the start-up configuration and TLS).

Import ``mixplane.server.app`` only where the server extra is installed (FastAPI, uvicorn).
"""
