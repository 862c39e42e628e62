"""Who may call what: the three roles and the one table that gives every route its minimum role.

A token carries a role (``mixplane serve --tokens-file``; ``--token-file`` is one admin token):

- ``viewer`` reads: datasets, files and their pointers, jobs, explanations, weights, states,
  the dashboard and the metrics. It changes nothing.
- ``trainer`` is a viewer that also runs training: submits jobs, fetches chunks, sends feedback,
  sets a job's mixture weights, writes checkpoints and restores jobs.
- ``admin`` may do everything, including what reaches the server's files or removes work:
  registration (confined to the data roots), counting tokens, adding properties, deleting jobs.

``ROUTES`` maps each route, as (method, path template) exactly as the app declares it, to its
``Access``: the least role it needs (``None``: open to anyone, no token) and the audit log's
action name for requests that must leave a line there. The server's guard enforces it (a route
missing from the table makes ``create_app`` fail, so a new route cannot go unguarded) and the
tests read it to derive the expectation for every route and role. Keyed by path template, the
table does not care which module declares a route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from mixplane.errors import MixplaneError

Role = Literal["viewer", "trainer", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # least to most


def allows(held: Role, needed: Role) -> bool:
    """Whether a token of role ``held`` may call a route that needs ``needed``."""
    return ROLES.index(held) >= ROLES.index(needed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Access:
    """What a route needs: ``role`` (None: open) and the audit log's ``action`` (None: none)."""

    role: Role | None
    action: str | None = None


OPEN = Access(role=None)
VIEWER = Access(role="viewer")
TRAINER = Access(role="trainer")
ADMIN = Access(role="admin")

#: Every route of the server: (method, path template) -> what it needs.
ROUTES: dict[tuple[str, str], Access] = {
    # open: no data (liveness, the API description, the dashboard's page and its three files)
    ("GET", "/healthz"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/"): OPEN,
    ("GET", "/static/{name}"): OPEN,
    # reading
    ("GET", "/metrics"): VIEWER,
    ("POST", "/v1/session"): VIEWER,
    ("DELETE", "/v1/session"): VIEWER,
    ("GET", "/v1/datasets"): VIEWER,
    ("POST", "/v1/explain"): VIEWER,
    ("GET", "/v1/files"): VIEWER,
    ("GET", "/v1/files/{file_id}/pointers"): VIEWER,
    ("GET", "/v1/jobs"): VIEWER,
    ("GET", "/v1/jobs/{job_id}"): VIEWER,
    ("GET", "/v1/jobs/{job_id}/explain"): VIEWER,
    ("GET", "/v1/jobs/{job_id}/state"): VIEWER,
    ("GET", "/v1/jobs/{job_id}/weights"): VIEWER,
    ("GET", "/v1/jobs/{job_id}/manifest"): VIEWER,
    ("GET", "/v1/jobs/{job_id}/trace"): VIEWER,
    ("GET", "/v1/dashboard/jobs"): VIEWER,
    ("GET", "/v1/jobs/{job_id}/dashboard"): VIEWER,
    # training
    ("POST", "/v1/jobs"): TRAINER,
    ("POST", "/v1/jobs/{job_id}/chunks"): TRAINER,
    ("POST", "/v1/jobs/{job_id}/feedback"): TRAINER,
    ("POST", "/v1/jobs/{job_id}/checkpoint"): TRAINER,
    ("POST", "/v1/jobs/{job_id}/state"): Access(role="trainer", action="restore"),
    ("POST", "/v1/jobs/{job_id}/weights"): Access(role="trainer", action="set-weights"),
    # administration
    ("POST", "/v1/datasets"): Access(role="admin", action="register"),
    ("POST", "/v1/token-counts"): Access(role="admin", action="count-tokens"),
    ("DELETE", "/v1/jobs/{job_id}"): Access(role="admin", action="delete"),
}


class UnguardedRouteError(MixplaneError, RuntimeError):
    """A route the app serves that ``ROUTES`` does not list (a bug, caught at start-up)."""


def access_of(method: str, template: str) -> Access | None:
    """What (method, path template) needs; None when the table does not list it."""
    return ROUTES.get(("GET" if method == "HEAD" else method, template))


def require_declared(routes: Iterable[tuple[str, str]]) -> None:
    """Raise naming every (method, template) of ``routes`` that the table does not list."""
    missing = sorted({(m, p) for m, p in routes if access_of(m, p) is None})
    if missing:
        shown = ", ".join(f"{m} {p}" for m, p in missing)
        msg = (
            f"routes without a role: {shown}; give each its Access in ROUTES "
            "(mixplane/server/roles.py)"
        )
        raise UnguardedRouteError(msg)
