"""Seed the bench database: a staff user and token, our keys and the naive baseline's rows.

Run by bench/run.py as `python -m bench.seed <keys> <connections>` with
DJANGO_SETTINGS_MODULE=bench.settings; prints the token on its last line.
"""

import sys

import django


def main(keys: int, connections: int) -> None:
    django.setup()
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from bench.naive.models import NaiveEntry
    from state import services

    user = User.objects.create_user("bench", password="bench-not-a-secret", is_staff=True)
    token = Token.objects.create(user=user)
    value = {"n": 0, "name": "bench", "tags": ["a", "b"], "ok": True}
    for n in range(keys):
        services.state_set(key=f"k{n}", value=value, actor="bench")
    NaiveEntry.objects.bulk_create(NaiveEntry(key=f"k{n}", value=value) for n in range(keys))
    for n in range(connections):
        services.state_set(key=f"cas{n}", value=value, actor="bench")
    services.state_set(key="counter", value=0, actor="bench")
    print(token.key)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
