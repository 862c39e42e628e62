"""API fuzzing with schemathesis: whatever the server's OpenAPI schema allows, and what it does
not (negative mode), gets a 4xx at worst, never a 5xx, for each role (issue 17); and every
request a role may not make (a write route for a viewer, an admin route for a trainer) is a
403, whatever its body, parameters or headers.

``POST /v1/datasets`` is fuzzed too: the server confines registration to its data root (a small
folder of the test), so a generated path such as ``/`` is refused before anything is read.
"""

from __future__ import annotations

import re
from collections import Counter
from urllib.parse import unquote, urlsplit

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from mixplane.server.roles import ROUTES, allows  # noqa: E402
from tests.server.conftest import TOKENS, RoleServer, spec  # noqa: E402

pytestmark = pytest.mark.integration

# per operation and strategy: the admin reaches the handlers; the others are mostly refused
EXAMPLES = {"admin": 15, "trainer": 6, "viewer": 5}


def template_matches(template: str, url: str) -> bool:
    """Whether a request's path is the route's (a generated path parameter may hold a '/')."""
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, unquote(urlsplit(url).path)) is not None


@pytest.mark.parametrize("role", ["admin", "trainer", "viewer"])
def test_no_server_errors(roles: RoleServer, role: str) -> None:
    server = roles.server
    auth = {"Authorization": f"Bearer {TOKENS[role]}"}
    job = {"spec": spec("fuzz"), "topology": {"dp_groups": 2, "workers": 2}}
    roles.client("admin").post("/v1/jobs", json=job).raise_for_status()
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=auth)
    session = requests.Session()
    statuses: Counter[int] = Counter()
    refusals: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18

    def fuzz(operation: schemathesis.APIOperation, method: str, template: str) -> None:
        access = ROUTES[(method, template)]
        refused = access.role is not None and not allows(role, access.role)  # type: ignore[arg-type]
        strategies = [
            operation.as_strategy(generation_mode=mode) for mode in schemathesis.GenerationMode
        ]
        if "{job_id}" in template and (method != "DELETE" or refused):
            strategies += [  # the job that exists, so requests get past the lookup
                operation.as_strategy(generation_mode=mode, path_parameters={"job_id": "fuzz"})
                for mode in schemathesis.GenerationMode
            ]

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=EXAMPLES[role] * len(strategies),
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call_and_validate(
                base_url=server.url, headers=auth, session=session, checks=[not_a_server_error]
            )
            statuses[response.status_code] += 1
            # (negative cases may carry another Authorization header: a 401 then)
            ours = response.request.headers.get("Authorization") == auth["Authorization"]
            if refused and ours and template_matches(template, response.request.url or ""):
                assert response.status_code == 403, (method, template, response.text[:300])
                refusals[f"{method} {template}"] += 1

        call()

    for operation in operations:
        fuzz(operation, operation.method.upper(), operation.path)
        session.cookies.clear()  # a session opened by POST /v1/session is a viewer's
    assert not [code for code in statuses if code >= 500]
    assert sum(statuses.values()) > 150
    assert statuses[200] > 0 and statuses[404] > 0
    writes = {f"{m} {p}" for (m, p), a in ROUTES.items() if a.role in ("trainer", "admin")}
    if role == "viewer":  # every write route was tried, and refused
        assert set(refusals) == writes
    if role == "trainer":
        assert set(refusals) == {f"{m} {p}" for (m, p), a in ROUTES.items() if a.role == "admin"}
    if role == "admin":
        assert not refusals and statuses[422] > 0
    assert min(refusals.values(), default=10) >= 5
    assert roles.client(role).get("/healthz").status_code == 200
