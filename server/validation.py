"""Pydantic validation errors as the `detail` every control path reports: field, message, type."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def validation_detail(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(part) for part in item["loc"]), "message": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False, include_context=False, include_input=False)
    ]
