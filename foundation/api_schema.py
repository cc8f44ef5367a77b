"""OpenAPI post-processing: every operation documents its error responses in the one error shape, and every
paginated list its Link header."""

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "A short code: invalid, not_authenticated, forbidden, "
                                                   "not_found, conflict, too_large, unprocessable, unavailable..."},
        "detail": {"type": "string", "description": "What was wrong, in words a user can act on."},
        "field": {"type": "string", "description": "The input at fault, where one is."},
        "fields": {"type": "object", "additionalProperties": True,
                   "description": "Per-field messages of a validation error."},
    },
}
ERROR_DESCRIPTIONS = {
    "400": "Bad input (a malformed value, a control character, too deep nesting, a bad limit or cursor).",
    "401": "Not authenticated.",
    "403": "Authenticated, but the role or team does not allow it (or separation of duties forbids it).",
    "404": "No such object.",
    "405": "Method not allowed.",
    "409": "Conflicts with the current state.",
    "413": "The body is too large.",
    "415": "Unsupported content type.",
    "422": "Received, but the content cannot be accepted.",
    "500": "Server error; nothing was changed.",
    "503": "A dependency (database, object storage) is unavailable; nothing was changed. Retry.",
}
_HTTP_METHODS = ("get", "put", "post", "patch", "delete")
# What the boundary accepts, stated in the schema so clients (and fuzzers) know it before they send.
_SLUG = "^[a-z0-9][a-z0-9._-]{0,99}$"
_NO_CONTROL_CHARACTERS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
PARAMETER_SCHEMAS = {
    ("path", "name"): {"type": "string", "pattern": _SLUG},
    ("path", "alias"): {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
    ("path", "path"): {"type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f\\\\]+$"},
    ("query", "limit"): {"type": "integer", "minimum": 1, "maximum": 1000},
}


# OpenAPI links from what a write answers to the operations that use it, so clients (and stateful fuzzing)
# can follow a model from its creation through versions, seals, jobs and change requests.
_NAME = "$response.body#/name"
_MODEL_VERSION = {"name": "$response.body#/model", "number": "$response.body#/number"}
LINKS = {
    ("v1_models_create", "201"): {
        "GetModel": ("v1_models_retrieve", {"name": _NAME}),
        "CreateVersion": ("v1_models_versions_create", {"name": _NAME}),
        "ListVersions": ("models_versions_list", {"name": _NAME}),
        "ListAliases": ("models_aliases_list", {"name": _NAME}),
    },
    ("v1_models_versions_create", "201"): {
        "GetVersion": ("v1_models_versions_retrieve", _MODEL_VERSION),
        "SealVersion": ("v1_models_versions_seal_create", _MODEL_VERSION),
        "GetLineage": ("v1_models_versions_lineage_retrieve", _MODEL_VERSION),
    },
    ("v1_models_versions_seal_create", "200"): {
        "Quantize": ("v1_models_versions_quantize_create", _MODEL_VERSION),
        "GetSealedVersion": ("v1_models_versions_retrieve", _MODEL_VERSION),
    },
    ("v1_models_versions_quantize_create", "202"): {
        "GetJob": ("v1_jobs_retrieve", {"job_id": "$response.body#/job"}),
        "CancelJob": ("v1_jobs_cancel_create", {"job_id": "$response.body#/job"}),
    },
    ("v1_models_versions_lora_updates_create", "202"): {
        "GetLoraJob": ("v1_jobs_retrieve", {"job_id": "$response.body#/job"}),
    },
    ("v1_models_versions_analyses_create", "202"): {
        "GetAnalysis": ("v1_analyses_retrieve", {"analysis_id": "$response.body#/analysis"}),
        "GetAnalysisJob": ("v1_jobs_retrieve", {"job_id": "$response.body#/job"}),
    },
    ("v1_models_versions_quantization_sweeps_create", "202"): {
        "GetQuantizationSweep": ("v1_quantization_sweeps_retrieve", {"sweep_id": "$response.body#/id"}),
        "GetQuantizationSweepJob": ("v1_jobs_retrieve", {"job_id": "$response.body#/job"}),
    },
    ("v1_change_requests_create", "201"): {
        "GetChangeRequest": ("v1_change_requests_retrieve", {"request_id": "$response.body#/id"}),
        "Decide": ("v1_change_requests_decisions_create", {"request_id": "$response.body#/id"}),
    },
    ("v1_datasets_create", "201"): {
        "GetDataset": ("v1_datasets_retrieve", {"dataset_id": "$response.body#/id"}),
        "ListPiiFindings": ("datasets_pii_findings_list", {"dataset_id": "$response.body#/id"}),
        "Redact": ("v1_datasets_redact_create", {"dataset_id": "$response.body#/id"}),
    },
}


def _add_links(result) -> None:
    operations = {operation.get("operationId"): operation
                  for path_item in result.get("paths", {}).values()
                  for method, operation in path_item.items() if method in _HTTP_METHODS}
    for (source, status), links in LINKS.items():
        response = operations.get(source, {}).get("responses", {}).get(status)
        if response is None:
            continue
        response["links"] = {name: {"operationId": target, "parameters": parameters}
                             for name, (target, parameters) in links.items() if target in operations}


def document_error_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_DESCRIPTIONS.items():
                responses.setdefault(code, {"description": description, "content": error_content})
            for parameter in operation.get("parameters", []):
                known = PARAMETER_SCHEMAS.get((parameter.get("in"), parameter.get("name")))
                if known:
                    parameter["schema"] = dict(known)
                elif parameter.get("in") in ("path", "query") and parameter.get("schema", {}).get("type") == "string":
                    parameter["schema"].setdefault("pattern", _NO_CONTROL_CHARACTERS)
            names = {parameter.get("name") for parameter in operation.get("parameters", [])}
            if "cursor" in names and "200" in responses:
                responses["200"].setdefault("headers", {})["Link"] = {
                    "description": 'The next page, as <url>; rel="next", while more rows exist.',
                    "schema": {"type": "string"}}
    _add_links(result)
    return result
