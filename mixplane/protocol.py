"""The wire protocol between remote clients and the server (``mixplane serve``), version 1.

Every request to ``/v1/...`` carries ``X-Mixplane-Protocol: 1`` (another version, or none, is a
400 naming both versions) and, when the server has a token, ``Authorization: Bearer TOKEN``
(401 otherwise). Bodies are msgpack (``application/msgpack``) or JSON (``application/json``,
for people and API fuzzers); the response uses the type the request's ``Accept`` names first
(msgpack or JSON; JSON by default). File pointers come as an Arrow IPC stream. Errors are
``{"error": message}`` with a 4xx status; never pickle, never code.

Endpoints (``ID`` a job id; bodies and answers as plain maps):

- ``GET /healthz`` -> ``{"status": "ok", "protocol": 1}`` (no token needed)
- ``GET /metrics`` -> Prometheus text
- ``GET /v1/datasets`` -> ``[DatasetInfo...]`` (``mixplane ls --json``)
- ``POST /v1/datasets`` ``{name, paths, format?, properties?, constants?, preset?, text_field?,
  on_error?, replace?}`` -> the registration report (paths are the server's files; no user
  functions travel)
- ``POST /v1/explain`` ``{where?, by?, runs?}`` -> ``QueryResult.to_dict``
- ``GET /v1/files`` -> ``[file row...]`` (``Catalog.files``)
- ``GET /v1/files/{file_id}/pointers`` -> Arrow IPC stream (``Catalog.pointers`` columns)
- ``POST /v1/jobs`` ``{spec: JobSpec.to_json(), topology, replace?}`` -> ``JobInfo``; the same
  spec again returns the existing job (clients of one run all submit), another spec under a
  taken id is a 409 unless ``replace``
- ``GET /v1/jobs`` -> ``[JobInfo...]``; ``GET /v1/jobs/ID`` -> ``JobInfo``;
  ``DELETE /v1/jobs/ID``
- ``GET /v1/jobs/ID/explain?chunks=N`` -> ``Client.explain``
- ``POST /v1/jobs/ID/chunks`` ``{requests: [{consumer, j}...], consumed: [{consumer, rank, j}...]}``
  -> ``{chunks: [{consumer, j, start, chunk}...]}``: each consumer's j-th chunk (``chunk`` the
  ``ChunkSpec.to_wire`` map, null past the end of the stream) and the sample offset it starts at;
  ``consumed`` reports the chunk each local rank is consuming (the job's positions and the
  release of planned chunks follow them)
- ``POST /v1/jobs/ID/feedback`` ``{step, loss_sum: [K floats], token_count: [K]}`` ->
  ``{applies_from: chunk | null}``
- ``GET /v1/jobs/ID/state`` -> ``Job.state_dict()`` (a consistent checkpoint of all consumers);
  ``POST /v1/jobs/ID/state`` ``{state}`` restores it
- ``POST /v1/jobs/ID/checkpoint`` -> ``{path}`` (written to the server's home now)
- ``GET /v1/jobs/ID/weights`` -> ``{weights: [K], mixture_log: [...]}``

- ``GET /v1/dashboard/jobs`` and ``GET /v1/jobs/ID/dashboard?history=N&steps=M``: the
  dashboard's data (``mixplane/server/dashboard.py``); the page itself is ``GET /`` (token as
  Bearer header or ``?token=``)

Statuses: 400 bad input or protocol version, 401 token, 404 unknown job/dataset/file, 409 a
different spec under a taken job id or a changed file, 413 body too large, 415 body type, 422
schema violation. A chunk request may reach a bounded number of chunks past those planned.

``JobInfo``: ``{job_id, spec, topology, selectors: [K], num_components, read_group}``.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Mixplane-Protocol"
MSGPACK = "application/msgpack"
JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
DEFAULT_PORT = 8411
MAX_BODY_BYTES = 16 * 1024 * 1024  # requests larger than this get 413
MAX_CHUNK_REQUESTS = 4096  # chunk requests per call
