from state import services


def test_state_set_creates_then_bumps_version(db, published_events):
    entry, created = services.state_set(key="a", value=1, actor="t")
    assert (entry.version, created) == (1, True)
    entry, created = services.state_set(key="a", value=2, actor="t")
    assert (entry.version, created, entry.revision) == (2, False, 2)
    assert [e.revision for e in published_events] == [1, 2]


def test_api_get(staff_client):
    staff_client.put("/api/v1/state/k", {"value": [1]}, format="json")
    r = staff_client.get("/api/v1/state/k")
    assert r.status_code == 200 and r.json()["data"]["value"] == [1]
