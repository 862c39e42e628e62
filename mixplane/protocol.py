"""The wire protocol between remote clients and the server (``mixplane serve``), version 1.

Every request to ``/v1/...`` carries ``X-Mixplane-Protocol: 1`` (another version, or none, is a
400 naming both versions) and, when the server has tokens, ``Authorization: Bearer TOKEN`` (or
the dashboard's session cookie): 401 without a known one, 403 when the token's role (viewer,
trainer, admin) is below the route's (``mixplane/server/roles.py``), naming the role needed. Bodies are msgpack (``application/msgpack``) or JSON (``application/json``,
for people and API fuzzers); the response uses the type the request's ``Accept`` names first
(msgpack or JSON; JSON by default). File pointers come as an Arrow IPC stream. Errors are
``{"error": message}`` with a 4xx status; never pickle, never code.

Endpoints (``ID`` a job id; bodies and answers as plain maps):

- ``GET /healthz`` -> ``{"status": "ok", "protocol": 1}`` (no token needed)
- ``POST /v1/session`` (bearer token) -> ``{name, role: "viewer", expires_in}`` and
  ``Set-Cookie: mixplane_session=...; HttpOnly; SameSite=Strict``; ``DELETE /v1/session`` ends
  the cookie's session -> ``{closed}``
- ``GET /metrics`` -> Prometheus text
- ``GET /v1/datasets`` -> ``[DatasetInfo...]`` (``mixplane ls --json``)
- ``POST /v1/datasets`` ``{name, paths, format?, properties?, constants?, preset?, text_field?,
  on_error?, replace?}`` -> the registration report (paths are the server's files below its data
  roots, else 403; no user functions travel)
- ``POST /v1/token-counts`` ``{tokenizer: {name} | {kind, data, pattern?, special_tokens?,
  normalize?, fingerprint?}, datasets?, workers?, on_changed?}`` -> ``TokenCountReport.to_dict``
  (``mixplane count-tokens --json``): exact token counts stored in the server's catalog, cached
  per tokenizer fingerprint and file; the tokenizer as in ``POST /v1/jobs`` (``tokens/wire.py``:
  a name the server knows, or a ``tokenizer.json`` / rank file's text, parsed as data); a
  changed file is a 409 (``on_changed: "error"``) or left out and listed (``"skip"``)
- ``POST /v1/explain`` ``{where?, by?, runs?}`` -> ``QueryResult.to_dict``
- ``GET /v1/files`` -> ``[file row...]`` (``Catalog.files``)
- ``GET /v1/files/{file_id}/pointers`` -> Arrow IPC stream (``Catalog.pointers`` columns)
- ``POST /v1/jobs`` ``{spec: JobSpec.to_json(), topology, replace?, tokenizer?}`` -> ``JobInfo``;
  the same spec again returns the existing job (clients of one run all submit), another spec
  under a taken id is a 409 unless ``replace``; ``tokenizer`` (``mixplane/tokens/wire.py``, a
  tokenizer as data) sizes a token job that names it; naming one the server cannot size with
  (not sent, no counts) is a 400
- ``GET /v1/jobs`` -> ``[JobInfo...]``; ``GET /v1/jobs/ID`` -> ``JobInfo``;
  ``DELETE /v1/jobs/ID``
- ``GET /v1/jobs/ID/explain?chunks=N`` -> ``Client.explain``
- ``POST /v1/jobs/ID/chunks`` ``{requests: [{consumer, j}...], consumed: [{consumer, rank, j}...]}``
  -> ``{chunks: [{consumer, j, start, chunk}...]}``: each consumer's j-th chunk (``chunk`` the
  ``ChunkSpec.to_wire`` map, null past the end of the stream) and the sample offset it starts at;
  ``consumed`` reports the chunk each local rank is consuming (the job's positions and the
  release of planned chunks follow them)
- ``POST /v1/jobs/ID/feedback`` ``{step, loss_sum: [K floats], token_count: [K], consumed?}``
  -> ``{applies_from: chunk | null}``; in the job's feedback log before it is answered
- ``GET /v1/jobs/ID/state`` -> ``Job.state_dict()`` (a consistent checkpoint of all consumers);
  ``POST /v1/jobs/ID/state`` ``{state}`` restores it
- ``POST /v1/jobs/ID/checkpoint`` -> ``{path}`` (written to the server's home now)
- ``GET /v1/jobs/ID/weights`` -> ``{weights: [K], mixture_log: [...]}``
- ``GET /v1/jobs/ID/manifest`` -> requested vs delivered token shares per component and the
  mixture versions (``mixplane/server/feedback_log.py`` ``summary``)
- ``GET /v1/jobs/ID/trace?start=N&limit=M`` -> ``{selectors, records: [...], next}``: the logged
  feedback messages from the N-th on

- ``GET /v1/dashboard/jobs`` and ``GET /v1/jobs/ID/dashboard?history=N&steps=M``: the
  dashboard's data (``mixplane/server/dashboard.py``); the page itself is ``GET /`` (open; it
  trades a token for the session cookie)

Statuses: 400 bad input or protocol version, 401 token, 403 role too low or a path outside the
data roots, 404 unknown job/dataset/file, 409 a
different spec under a taken job id or a changed file, 413 body too large, 415 body type, 422
schema violation. A chunk request may reach a bounded number of chunks past those planned.

``JobInfo``: ``{job_id, spec, topology, selectors: [K], num_components, read_group,
assignment: {frontier, carried}, sizing: {key: {source, bytes_per_token}}, note}``.
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
