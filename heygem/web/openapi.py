"""OpenAPI request-body documents of the job routes, with "options" generated from the option schema.

Only documentation: the routes read their bodies themselves (so that every error stays a one-line
400), and FastAPI merges these documents into /openapi.json through `openapi_extra`.
"""

from __future__ import annotations

from typing import Any

from heygem.engine.api import OptionSpec, option_default, option_specs, option_type

REFERENCE_DOC = "path under an input folder, s3://bucket/key, obs://bucket/key or an allowed https:// URL"
OPTIONS_DOC = "per-job options; every field is optional and defaults as shown"
OPTIONS_TEXT_DOC = "the options object as JSON text (the same fields as the JSON body's options)"
JSON_TYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


def options_schema() -> dict[str, Any]:
    """JSON Schema of the "options" object: one property per SyncOptions field."""
    return {
        "type": "object",
        "description": OPTIONS_DOC,
        "additionalProperties": False,
        "properties": {name: option_schema(name, spec) for name, spec in option_specs().items()},
    }


def option_schema(name: str, spec: OptionSpec) -> dict[str, Any]:
    """One option: type, enum, bounds, default and description, all read from its OptionSpec."""
    default = option_default(name)
    scalar = _scalar_schema(name, spec)
    if spec.parts:
        parts = len(spec.parts)
        schema: dict[str, Any] = {"type": "array", "items": scalar, "minItems": parts, "maxItems": parts}
        description = f"{spec.help} ({' '.join(spec.parts)})"
    else:
        schema = scalar
        description = spec.help
    if default is None:
        # FastAPI leaves null values out of the document, so the description says it.
        schema = {"anyOf": [schema, {"type": "null"}], "description": f"{description} (default: none)"}
    else:
        schema["description"] = description
        schema["default"] = list(default) if isinstance(default, tuple) else default
    return schema


def _scalar_schema(name: str, spec: OptionSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": JSON_TYPES[option_type(name)]}
    if spec.choices:
        schema["enum"] = list(spec.choices)
    elif spec.widget == "text":
        if spec.maximum is not None:
            schema["maxLength"] = int(spec.maximum)
    else:
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
    return schema


def _body(json_schema: dict[str, Any], form_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
            "required": True,
        }
    }


def job_body_doc() -> dict[str, Any]:
    """POST /api/v1/jobs: references as JSON, or the two files as multipart."""
    json_schema = {
        "type": "object",
        "required": ["audio", "video"],
        "properties": {
            "audio": {"type": "string", "description": REFERENCE_DOC},
            "video": {"type": "string", "description": "face video or photo, same forms as audio"},
            "options": options_schema(),
            "output_name": {"type": "string"},
            "output_prefix": {"type": "string", "description": "s3://bucket/prefix/ or obs://..."},
            "idempotency_key": {"type": "string"},
        },
    }
    form_schema = {
        "type": "object",
        "required": ["audio", "video"],
        "properties": {
            "audio": {"type": "string", "format": "binary"},
            "video": {"type": "string", "format": "binary"},
            "options": {"type": "string", "description": OPTIONS_TEXT_DOC},
            "output_name": {"type": "string"},
            "output_prefix": {"type": "string"},
        },
    }
    return _body(json_schema, form_schema)


def batch_body_doc() -> dict[str, Any]:
    """POST /api/v1/batches: items as JSON, or uploads (pairs or a manifest) as multipart."""
    json_schema = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "audio": {"type": "string"},
                        "video": {"type": "string"},
                        "output_name": {"type": "string"},
                    },
                },
            },
            "options": options_schema(),
            "output_prefix": {"type": "string"},
        },
    }
    form_schema = {
        "type": "object",
        "properties": {
            "audio": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "one audio for every video, or one per video in order",
            },
            "video": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "manifest": {
                "type": "string",
                "format": "binary",
                "description": "JSONL: {audio, video, output_name} per line",
            },
            "options": {"type": "string", "description": OPTIONS_TEXT_DOC},
            "output_prefix": {"type": "string"},
        },
    }
    return _body(json_schema, form_schema)
