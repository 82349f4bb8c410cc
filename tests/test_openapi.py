"""The committed OpenAPI spec is the one the app serves."""

from __future__ import annotations

import json

from service.openapi_spec import render
from tests.conftest import ROOT


def test_the_committed_spec_is_current() -> None:
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == render(), "openapi/openapi.json is stale: run `defeater openapi`"


def test_the_spec_documents_the_contract() -> None:
    spec = json.loads(render())
    paths = spec["paths"]
    for path in ("/v1/model-configs", "/v1/datasets", "/v1/datasets/{dataset_id}/cases", "/v1/jobs",
                 "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/healthz", "/readyz"):  # fmt: skip
        assert path in paths, path
    upload = paths["/v1/datasets"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "application/x-ndjson", "text/csv"} <= set(upload)
    assert "api_key" not in spec["components"]["schemas"]["ModelConfigCreate"]["properties"]
