"""The OpenAPI spec as the app serves it, rendered stably for ``openapi/openapi.json``."""

from __future__ import annotations

import json

from service.app import create_app


def render() -> str:
    return json.dumps(create_app().openapi(), indent=2, ensure_ascii=False) + "\n"
