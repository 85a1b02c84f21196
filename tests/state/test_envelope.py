"""Every response under /api/ is the envelope: unknown routes, wrong methods, big bodies, bugs."""

import json
import logging

import pytest
from django.core.exceptions import RequestDataTooBig
from django.test import Client, RequestFactory
from django.urls import path
from rest_framework import exceptions
from rest_framework.decorators import api_view, permission_classes

from config import urls as root_urls
from sessions_tracking import correlation
from state import selectors, services
from state.api import errors

URL = "/api/v1/state"


def envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    payload = json.loads(response.content)
    assert payload["success"] is False
    assert set(payload["error"]) == {"code", "message", "details"}
    assert payload["error"]["code"] == code, payload
    return payload["error"]


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    ("method", "where"),
    [
        ("put", f"{URL}/a/b"),
        ("get", f"{URL}/a/b/c"),
        ("get", f"{URL}/snapshots/abc"),
        ("delete", f"{URL}/snapshots/abc"),
        ("get", f"{URL}/a/nosuchaction"),
        ("post", "/api/v2/state/a"),
        ("get", "/api/"),
        ("get", f"{URL}/"),
    ],
)
def test_unknown_routes_under_api_are_404_envelopes(staff_client, settings, debug, method, where):
    settings.DEBUG = debug
    before = selectors.store_revision()
    response = getattr(staff_client, method)(where, {"value": 1}, format="json")
    envelope(response, 404, "not_found")
    assert selectors.store_revision() == before


def test_unknown_routes_outside_api_keep_django_pages(staff_client):
    response = staff_client.get("/nowhere")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_admin_keeps_html(admin_client):
    response = admin_client.get("/admin/nowhere/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_snapshot_id_beyond_any_id_is_404(staff_client):
    envelope(staff_client.get(f"{URL}/snapshots/{'9' * 30}"), 404, "not_found")
    envelope(staff_client.get(f"{URL}/snapshots/{2**63}"), 404, "not_found")


def test_wrong_method_is_405_envelope(staff_client):
    error = envelope(staff_client.put(f"{URL}/keys", {"value": 1}, format="json"), 405,
                     "method_not_allowed")  # fmt: skip
    assert "PUT" in error["message"]
    envelope(staff_client.delete(f"{URL}/stats"), 405, "method_not_allowed")


def test_options_is_an_envelope(staff_client):
    response = staff_client.options(f"{URL}/keys")
    assert response.status_code == 200
    assert response.json()["success"] is True and "name" in response.json()["data"]


def test_unacceptable_accept_header_is_406_envelope(staff_client):
    response = staff_client.get(f"{URL}/stats", headers={"Accept": "text/html"})
    envelope(response, 406, "not_acceptable")


def test_wrong_media_type_is_415_envelope(staff_client):
    response = staff_client.put(
        f"{URL}/a", "value=1", content_type="application/x-www-form-urlencoded"
    )
    envelope(response, 415, "unsupported_media_type")


def test_one_request_size_setting_for_django_and_drf(settings):
    """DATA_UPLOAD_MAX_MEMORY_SIZE is derived from STATE_MAX_REQUEST_BYTES (not Django's 2.5 MB)."""
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == settings.STATE_MAX_REQUEST_BYTES


def test_a_3_mb_bulk_is_accepted(staff_client):
    operations = [{"op": "set", "key": f"k{i}", "value": "x" * 3000} for i in range(1000)]
    body = json.dumps({"operations": operations})
    assert len(body) > 3_000_000
    response = staff_client.post(f"{URL}/bulk", body, content_type="application/json")
    assert response.status_code == 200, response.content[:300]
    assert selectors.keys_list(prefix="k").total == 1000


def test_body_over_djangos_limit_is_413_envelope(staff_client, settings):
    """Django's own refusal (RequestDataTooBig, an HTML 400 by default) becomes our 413."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.STATE_MAX_REQUEST_BYTES = 1000
    before = selectors.store_revision()
    body = json.dumps({"value": "x" * 2000})
    error = envelope(staff_client.put(f"{URL}/a", body, content_type="application/json"), 413,
                     "value_too_large")  # fmt: skip
    assert error["details"]["limit"] == 1000
    assert selectors.store_revision() == before


def test_djangos_own_400_for_a_big_body_is_413_envelope():
    request = RequestFactory().post(f"{URL}/bulk")
    response = root_urls.handler400(request, RequestDataTooBig("too big"))
    envelope(response, 413, "value_too_large")
    response = root_urls.handler400(RequestFactory().get("/admin/"), RequestDataTooBig("x"))
    assert response["Content-Type"].startswith("text/html")


def test_throttled_is_429_envelope_with_retry_after():
    body, status, headers = errors.envelope_of(exceptions.Throttled(wait=7))
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert headers["Retry-After"] == "7" and body["error"]["details"]["retry_after"] == 7


# --- unexpected errors: a 500 envelope, logged with the request's correlation id -------------


@api_view(["GET"])
@permission_classes([])
def _broken_api_view(request):
    raise RuntimeError("a bug in a view")


def _broken_plain_view(request):
    raise RuntimeError("a bug outside DRF")


urlpatterns = [
    path("api/v1/broken", _broken_api_view),
    path("api/v1/broken-plain", _broken_plain_view),
    path("elsewhere/broken", _broken_plain_view),
    *root_urls.urlpatterns,
]
handler500 = root_urls.handler500
handler404 = root_urls.handler404


@pytest.fixture
def broken_routes(settings):
    settings.ROOT_URLCONF = __name__


@pytest.mark.parametrize("where", ["/api/v1/broken", "/api/v1/broken-plain"])
def test_unexpected_error_is_500_envelope_logged_with_correlation_id(
    db, broken_routes, caplog, where
):
    token = correlation.current.set("cid-7-test")
    try:
        with caplog.at_level(logging.ERROR, logger="state.api"):
            response = Client(raise_request_exception=False).get(
                where, headers={"X-Correlation-ID": "cid-7-test"}
            )
    finally:
        correlation.current.reset(token)
    error = envelope(response, 500, "internal_error")
    assert error["details"]["correlation_id"] == "cid-7-test"
    assert "a bug" not in error["message"]  # no internals leak to the client
    logged = [r for r in caplog.records if r.name == "state.api"]
    assert logged and "cid-7-test" in logged[0].getMessage()
    assert logged[0].exc_info is not None and "a bug" in str(logged[0].exc_info[1])


def test_unexpected_error_outside_api_keeps_django_page(db, broken_routes):
    response = Client(raise_request_exception=False).get("/elsewhere/broken")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


def test_state_error_with_field_carries_details_fields(staff_client):
    """A service's ValidationFailed(field=...) is reported as details.fields like DRF's."""
    services.state_set(key="a", value=1)
    error = envelope(staff_client.post(f"{URL}/cas", {"key": "a", "new_value": 2}, format="json"),
                     400, "validation_error")  # fmt: skip
    assert error["details"]["fields"] == {"expected": [error["message"]]}


def test_bulk_operation_refused_by_the_service_names_index_and_fields(staff_client):
    body = {"operations": [{"op": "delete", "key": "a"}, {"op": "set", "key": "b", "value": 1,
            "ttl": 0}], "atomic": False}  # fmt: skip
    error = envelope(staff_client.post(f"{URL}/bulk", body, format="json"), 400,
                     "validation_error")  # fmt: skip
    assert error["details"]["index"] == 1
    assert list(error["details"]["fields"]) == ["ttl"]
