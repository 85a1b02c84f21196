"""The REST API served by a real daphne process through config.http's pooled handler."""

import hashlib
import http.client
import json
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings


def raw(server, method: str, path: str, token: str, body: bytes | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_more_concurrent_requests_than_pool_threads_all_complete(servers, tokens):
    server = servers[0]
    server.put("e2e-http:counter", 0, tokens["e2e-staff"])
    requests = settings.STATE_HTTP_THREADS * 2

    def incr(_):
        return server.request("POST", "/api/v1/state/incr", tokens["e2e-staff"],
                              {"key": "e2e-http:counter", "by": 1})  # fmt: skip

    with ThreadPoolExecutor(max_workers=requests) as pool:
        results = list(pool.map(incr, range(requests)))

    assert [status for status, _ in results] == [200] * requests
    assert sorted(body["data"]["value"] for _, body in results) == list(range(1, requests + 1))


def test_bad_input_gets_the_envelope_not_a_500(servers, tokens):
    server = servers[0]
    status, _, body = raw(server, "PUT", "/api/v1/state/e2e-http:bad", tokens["e2e-staff"],
                          b'{"value": ')  # fmt: skip
    assert status == 400
    assert json.loads(body)["error"]["code"] == "validation_error"

    too_big = json.dumps({"value": "x" * settings.STATE_MAX_VALUE_BYTES}).encode()
    status, _, body = raw(server, "PUT", "/api/v1/state/e2e-http:bad", tokens["e2e-staff"], too_big)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "value_too_large"

    status, body = server.request("GET", "/api/v1/state/e2e-http:bad", tokens["e2e-staff"])
    assert status == 404


def test_snapshot_download_streams_the_stored_file(servers, tokens):
    server = servers[0]
    for n in range(200):
        server.put(f"e2e-http:snap:{n}", {"n": n, "pad": "y" * 500}, tokens["e2e-staff"])
    status, created = server.request("POST", "/api/v1/state/snapshot", tokens["e2e-staff"], {})
    assert status == 201, created
    snapshot = created["data"]

    status, headers, payload = raw(
        server, "GET", f"/api/v1/state/snapshots/{snapshot['id']}/download", tokens["e2e-staff"]
    )

    assert status == 200
    assert len(payload) == snapshot["compressed_size"] > 0
    digest = hashlib.sha256(payload).hexdigest()
    assert headers["X-Checksum-SHA256"] == digest
    assert snapshot["checksum"] == f"sha256:{digest}"
