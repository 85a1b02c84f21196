"""The OpenAPI schema tells the truth (fuzz/run_schemathesis.py proves it against a server)."""

import re

import pytest
import yaml

from state import rules
from state.api.schema import decimal_range_pattern

URL = "/api/v1/schema/"


@pytest.fixture
def schema(client, db) -> dict:
    response = client.get(URL)
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_error_response_is_the_envelope(schema):
    for path, method, operation in operations(schema):
        for status in ("400", "401", "403", "404", "405", "413", "415", "500", "503"):
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (path, method)
    codes = schema["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
    assert "internal_error" in codes["code"]["enum"]


def test_snapshot_list_is_an_envelope_not_a_bare_array(schema):
    response = schema["paths"]["/api/v1/state/snapshots"]["get"]["responses"]["200"]
    ref = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    data = schema["components"]["schemas"][ref]["properties"]["data"]["$ref"].rsplit("/")[-1]
    assert "snapshots" in schema["components"]["schemas"][data]["properties"]


def test_key_parameter_states_the_key_rule(schema):
    [parameter] = [p for p in schema["paths"]["/api/v1/state/{key}"]["put"]["parameters"]
                   if p["name"] == "key"]  # fmt: skip
    pattern = re.compile(parameter["schema"]["pattern"])
    for key in ["a", "user:alice:prefs", "A" * 256, "0.x@y-z_"]:
        assert pattern.search(key), key
    for key in ["", "_a", "a b", "a/b", "A" * 257, *rules.RESERVED_KEYS]:
        assert not pattern.search(key), key


def test_request_limits_come_from_settings(client, db, settings):
    settings.STATE_MAX_BULK_OPERATIONS = 7
    settings.STATE_LIST_MAX_LIMIT = 70
    schema = yaml.safe_load(client.get(URL).content)
    bulk = schema["components"]["schemas"]["BulkInputRequest"]["properties"]["operations"]
    assert bulk["minItems"] == 1 and bulk["maxItems"] == 7
    [limit] = [p for p in schema["paths"]["/api/v1/state/keys"]["get"]["parameters"]
               if p["name"] == "limit"]  # fmt: skip
    assert limit["schema"]["maximum"] == 70 and limit["schema"]["minimum"] == 1


def test_mget_keys_and_cas_expectation(schema):
    components = schema["components"]["schemas"]
    keys = components["MgetInputRequest"]["properties"]["keys"]
    assert keys["minItems"] == 1 and "pattern" in keys["items"]
    assert components["CasInputRequest"]["oneOf"] == [
        {"required": ["expected"]}, {"required": ["expected_version"]},
    ]  # fmt: skip


@pytest.mark.parametrize("high", [1, 9, 10, 99, 100, 315360000, 123456789])
def test_decimal_range_pattern_matches_exactly_one_to_high(high):
    pattern = re.compile(decimal_range_pattern(high))
    probes = {0, 1, high - 1, high, high + 1, high * 10, *range(1, min(high, 2000) + 50)}
    for number in probes:
        assert bool(pattern.fullmatch(str(number))) == (1 <= number <= high), number
    assert not pattern.fullmatch("01") and not pattern.fullmatch("")


def test_docs_page_loads_swagger_ui_from_our_static_files(client, db):
    page = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
    assert "/static/drf_spectacular_sidecar/" in page
