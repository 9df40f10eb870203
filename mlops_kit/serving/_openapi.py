"""The OpenAPI document and the docs page, written from the model's own schema."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # pragma: no cover
    from .app import ModelService


def _feature_schema(feature, reject_unknown: bool) -> dict[str, Any]:
    if feature.kind == "numeric":
        types = ["integer" if feature.integer else "number"]
    elif feature.kind == "boolean":
        types = ["boolean"]
    elif feature.kind in ("datetime", "text"):
        types = ["string"]
    else:
        types = sorted({"string" if isinstance(c, str) else "boolean" if isinstance(c, bool) else "number"
                        for c in feature.categories} | {"string"})
    entry: dict[str, Any] = {"type": types + (["null"] if feature.nullable else [])}
    if feature.kind == "datetime":
        entry["description"] = "an ISO 8601 date or datetime"
    if feature.kind == "categorical":
        entry["description"] = ("categories seen in training: " + ", ".join(map(str, feature.categories))
                                + ("; others are rejected" if reject_unknown else "; others are accepted and "
                                   "encoded as none of them"))
        entry["examples"] = list(feature.categories[:3])
    return entry


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(service: "ModelService") -> dict[str, Any]:
    from .. import __version__

    schema = service.schema
    reject = service.settings.unknown_categories == "reject"
    record = {"type": "object", "additionalProperties": False, "required": list(schema.names),
              "properties": {f.name: _feature_schema(f, reject) for f in schema.features}}
    columns = {"type": "object", "additionalProperties": False, "required": list(schema.names),
               "properties": {f.name: {"type": "array", "items": _feature_schema(f, reject)} for f in schema.features}}
    classifier = service.predictor.classes is not None
    prediction = {"type": "object", "required": ["model", "version", "predictions"], "properties": {
        "model": {"type": "string"}, "version": {"type": "string"},
        "predictions": {"type": "array", "items": {}},
        **({"classes": {"type": "array", "items": {}},
            "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                              "description": "per row, one probability per class, in the order of classes"}}
           if classifier else {})}}
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", "enum": list(schema.names)}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "examples": ["FP64", "BYTES"]}, "data": {"type": "array"}}}
    bad_input = {"400": _error_response("The body is not JSON"),
                 "413": _error_response(f"The body is over {service.settings.max_body_bytes} bytes or the batch "
                                        f"over {service.settings.max_rows} rows"),
                 "422": _error_response("The body does not fit the model's schema: the error names the row, "
                                        "the feature, what was expected and what was sent")}
    name_param = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": [service.name]}}]
    examples = service.predictor.examples.get("records", [])[:2]

    def get(summary: str, description: str = "OK") -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": {"description": description}}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": f"mlops-kit model server: {service.name}", "version": __version__,
                 "description": f"Serves model {service.name} (version {service.predictor.version}, "
                                f"{service.predictor.task}). Inputs are checked against the training schema."},
        "paths": {
            "/predict": {"post": {
                "summary": "Predict a batch given as records or as columns",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [{"type": "array", "items": {"$ref": "#/components/schemas/Record"},
                                          "minItems": 1, "maxItems": service.settings.max_rows},
                                         {"$ref": "#/components/schemas/Columns"}]},
                    "example": examples}}},
                "responses": {"200": {"description": "Predictions", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Prediction"}}}}, **bad_input}}},
            "/v2": get("Open Inference Protocol: server metadata"),
            "/v2/health/live": get("Open Inference Protocol: the process answers"),
            "/v2/health/ready": {"get": {"summary": "Open Inference Protocol: the model is loaded and warmed up",
                                         "responses": {"200": {"description": "Ready"},
                                                       "503": {"description": "Not ready (starting or draining)"}}}},
            "/v2/models/{name}": {"get": {"summary": "Open Inference Protocol: model metadata (inputs and types)",
                                          "parameters": name_param,
                                          "responses": {"200": {"description": "Metadata"},
                                                        "404": _error_response("No such model")}}},
            "/v2/models/{name}/ready": {"get": {"summary": "Open Inference Protocol: model readiness",
                                                "parameters": name_param,
                                                "responses": {"200": {"description": "Ready"},
                                                              "404": _error_response("No such model")}}},
            "/v2/models/{name}/infer": {"post": {
                "summary": "Open Inference Protocol: inference, one input tensor per feature",
                "parameters": name_param,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["inputs"], "properties": {
                        "id": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
                        "outputs": {"type": "array", "items": {"type": "object", "properties": {
                            "name": {"type": "string", "enum": ["predict", "predict_proba"]}}}}}}}}},
                "responses": {"200": {"description": "Outputs predict (and predict_proba for classifiers)"},
                              "404": _error_response("No such model"), **bad_input}}},
            "/metrics": get("Prometheus metrics", "text/plain exposition format"),
            "/openapi.json": get("This document"),
            "/docs": get("The docs page (HTML)"),
        },
        "components": {"schemas": {
            "Record": record, "Columns": columns, "Prediction": prediction,
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string", "description": "what is wrong: \"X must be Y. Got Z instead.\""},
                "detail": {"type": ["object", "null"], "properties": {
                    "field": {"type": ["string", "null"]}, "row": {"type": ["integer", "null"]},
                    "expected": {"type": ["string", "null"]}, "got": {"type": ["string", "null"]}}}}}}},
    }


def docs_page(service: "ModelService") -> str:
    """A self-contained page (no scripts from elsewhere: clusters may have no internet)."""
    esc = html.escape
    rows = "".join(
        f"<tr><td><code>{esc(f.name)}</code></td><td>{esc(f.kind)}</td><td>{'yes' if f.nullable else 'no'}</td>"
        f"<td>{esc(', '.join(map(str, f.categories)) if f.kind == 'categorical' else ('integer' if f.integer else 'number') if f.kind == 'numeric' else f.kind)}</td></tr>"
        for f in service.schema.features)
    example = orjson.dumps(service.predictor.examples.get("records", [])[:1]).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(service.name)} - mlops-kit model server</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
pre{{background:#f4f4f4;padding:.5em;overflow-x:auto}}</style></head><body>
<h1>Model <code>{esc(service.name)}</code></h1>
<p>Version {esc(service.predictor.version)}, {esc(service.predictor.task)}.
The machine-readable description is <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
<h2>Endpoints</h2><ul>
<li><code>POST /predict</code>: records <code>[{{"feature": value, ...}}]</code> or columns
<code>{{"feature": [values]}}</code>; answers <code>predictions</code> (and <code>classes</code>,
<code>probabilities</code> for classifiers).</li>
<li><code>POST /v2/models/{esc(service.name)}/infer</code>: Open Inference Protocol v2, one input tensor per feature.</li>
<li><code>GET /v2/models/{esc(service.name)}</code>, <code>/v2/health/live</code>, <code>/v2/health/ready</code>, <code>/v2</code></li>
<li><code>GET /metrics</code>: Prometheus metrics.</li></ul>
<h2>Features</h2><table><tr><th>name</th><th>kind</th><th>may be null</th><th>values</th></tr>{rows}</table>
<p>Every feature must be sent, and no other. Categories not seen in training are
{"rejected (422)" if service.settings.unknown_categories == "reject" else "accepted and encoded as none of the known ones"}.
At most {service.settings.max_rows} rows and {service.settings.max_body_bytes} bytes per request (413 beyond).
A mistake is answered with a 4xx and <code>{{"error": "X must be Y. Got Z instead.", "detail": {{...}}}}</code>.</p>
<h2>Example</h2><pre>curl -s -X POST -H 'content-type: application/json' \\
  --data '{esc(example)}' http://HOST:PORT/predict</pre>
</body></html>
"""
