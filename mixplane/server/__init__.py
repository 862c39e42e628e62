"""The mixplane server (``mixplane serve``): catalog and jobs over HTTP, wire protocol in
``mixplane.protocol``. ``app`` holds the HTTP layer, ``jobs`` the job store and its
checkpoints, ``metrics`` the Prometheus counters.

Import ``mixplane.server.app`` only where the server extra is installed (FastAPI, uvicorn).
"""
