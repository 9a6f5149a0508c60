"""The client against the OpenAPI document, the API's contract (``Sources/KilnAPI/openapi.yaml``).

Each operation the client declares (``kiln_client.operations``) must exist in the document with
the parameters, headers and body fields the client sends, and every field the client reads (the
fields of its dataclasses, recursively) must be in the answer's schema: required there unless the
client reads it as ``Optional``, and of a matching type. The error classes must match the error
codes and statuses the document gives for these operations.
"""

import dataclasses
import pathlib
import re
import typing
from datetime import datetime

import pytest
import yaml

from kiln_client.errors import ERRORS_BY_CODE
from kiln_client.operations import OPERATIONS
from kiln_client.types import wire_fields

REPO = pathlib.Path(__file__).resolve().parents[3]
DOCUMENT = yaml.safe_load((REPO / "Sources" / "KilnAPI" / "openapi.yaml").read_text())

#: The JSON Schema types a Python type may be read from.
SCHEMA_TYPES = {str: {"string"}, int: {"integer"}, float: {"number", "integer"}, bool: {"boolean"}}


def lookup(ref: str) -> dict:
    """The node a local ``$ref`` (``#/components/...``) points at."""
    node = DOCUMENT
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def resolve(node: dict) -> dict:
    """``node`` with its ``$ref`` followed; keys beside the ``$ref`` (a description) win."""
    while "$ref" in node:
        node = {**lookup(node["$ref"]), **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def operation_node(operation) -> dict:
    paths = DOCUMENT["paths"]
    assert operation.path in paths, f"the document has no path {operation.path}"
    methods = paths[operation.path]
    assert operation.method.lower() in methods, f"the document has no {operation.method} {operation.path}"
    return methods[operation.method.lower()]


def documented_parameters(operation) -> dict:
    """The document's parameters of the operation (its path's and its own), by ``(in, name)``;
    header names in lower case, as HTTP compares them."""
    nodes = DOCUMENT["paths"][operation.path].get("parameters", []) + operation_node(operation).get("parameters", [])
    parameters = {}
    for parameter in map(resolve, nodes):
        name = parameter["name"].lower() if parameter["in"] == "header" else parameter["name"]
        parameters[(parameter["in"], name)] = parameter
    return parameters


def success_responses(operation) -> dict:
    return {status: resolve(response) for status, response in operation_node(operation)["responses"].items()
            if str(status).startswith("2")}


def check_reads(cls: type, schema: dict, where: str) -> None:
    """Every field ``cls`` reads is a property of the object ``schema``, present whenever the
    client counts on it, and of a type the client can read it as."""
    schema = resolve(schema)
    assert schema.get("type") == "object", f"{where}: the document's schema is not an object"
    properties, required = schema.get("properties", {}), set(schema.get("required", []))
    for name, hint in wire_fields(cls).items():
        assert name in properties, f"{where}: the client reads '{name}', which the document does not define"
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        assert optional or name in required, (
            f"{where}: the client counts on '{name}', which the document says may be absent")
        if optional:
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        check_value(hint, properties[name], f"{where}.{name}")


def check_value(hint, schema: dict, where: str) -> None:
    schema = resolve(schema)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return
    if dataclasses.is_dataclass(hint):
        check_reads(hint, schema, where)
    elif origin is list:
        assert schema.get("type") == "array", f"{where}: the client reads a list, the document has {schema}"
        check_value(args[0], schema["items"], f"{where}[]")
    elif origin is dict:
        assert schema.get("type") == "object", f"{where}: the client reads an object, the document has {schema}"
        if args[1] is not typing.Any:
            check_value(args[1], schema["additionalProperties"], f"{where}{{}}")
    elif hint is datetime:
        assert (schema.get("type"), schema.get("format")) == ("string", "date-time"), (
            f"{where}: the client reads a time, the document has {schema}")
    else:
        assert schema.get("type") in SCHEMA_TYPES[hint], (
            f"{where}: the client reads {hint.__name__}, the document has {schema.get('type')}")


by_id = pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.operation_id)


@by_id
def test_the_operation_exists(operation):
    assert operation_node(operation)["operationId"] == operation.operation_id


@by_id
def test_the_parameters_sent_are_documented(operation):
    parameters = documented_parameters(operation)
    sent = ({("path", name) for name in re.findall(r"\{(\w+)\}", operation.path)}
            | {("query", name) for name in operation.query}
            | {("header", name.lower()) for name in operation.headers})
    assert sent <= set(parameters), f"not in the document: {sorted(sent - set(parameters))}"
    required = {key for key, parameter in parameters.items() if parameter.get("required")}
    assert required <= sent, f"the document requires {sorted(required - sent)}"


@by_id
def test_the_request_body_is_documented(operation):
    body = resolve(operation_node(operation).get("requestBody", {}))
    content = body.get("content", {})
    if operation.body is None:
        assert not body.get("required"), "the document requires a body the client does not send"
    elif operation.body == "binary":
        assert any(resolve(media["schema"]).get("format") == "binary" for media in content.values())
    else:
        schema = resolve(content["application/json"]["schema"])
        properties, required = set(schema["properties"]), set(schema.get("required", []))
        assert set(operation.request_fields) <= properties, (
            f"the client sends fields the document does not define: {sorted(set(operation.request_fields) - properties)}")
        assert required <= set(operation.request_fields), f"the document requires {sorted(required - set(operation.request_fields))}"


@by_id
def test_every_success_answer_is_read_as_documented(operation):
    responses = success_responses(operation)
    assert responses, "the document gives no success answer"
    for status, response in responses.items():
        content = response.get("content", {})
        if operation.response_media is None:
            assert not content, f"{status}: the client reads no body, the document gives one"
            continue
        assert operation.response_media in content, f"{status}: the answer is not {operation.response_media}"
        if operation.response is None:
            continue
        if operation.response_schema:
            # An event stream: each event's `data:` line holds the named schema as JSON.
            schema = DOCUMENT["components"]["schemas"][operation.response_schema]
            data = content[operation.response_media]["schema"]["properties"]["data"]
            assert data["contentMediaType"] == "application/json"
            assert data["contentSchema"]["$ref"] == f"#/components/schemas/{operation.response_schema}"
        else:
            schema = content[operation.response_media]["schema"]
        check_reads(operation.response, schema, f"{operation.operation_id} {status}")


@by_id
def test_each_documented_error_has_its_class(operation):
    """Each error answer of the operation refers to a shared response whose description begins
    with its code in backquotes; each code must map to its class, with the same status."""
    for status, response in operation_node(operation)["responses"].items():
        if int(status) < 400:
            continue
        code = re.match(r"`(\w+)`", lookup(response["$ref"])["description"]).group(1)
        assert code in ERRORS_BY_CODE, f"{status}: no class for the code {code}"
        assert ERRORS_BY_CODE[code][0] == int(status), f"{code} is {status} in the document"


@by_id
def test_a_429_carries_retry_after(operation):
    response = operation_node(operation)["responses"].get("429")
    if response:
        header = resolve(resolve(response)["headers"]["Retry-After"])
        assert resolve(header["schema"])["type"] == "integer"


def test_the_document_lists_each_error_code_with_its_status():
    rows = dict((code, int(status)) for status, code in re.findall(
        r"^\| (\d{3}) \| `(\w+)` \|", DOCUMENT["info"]["description"], re.MULTILINE))
    assert {code: status for code, (status, _) in ERRORS_BY_CODE.items()} == {
        code: rows.get(code) for code in ERRORS_BY_CODE}
