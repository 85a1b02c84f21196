"""manage.py create_user NAME [--staff] [--group G]: a user with an API token, printed alone."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = (
        "Create a user (non-staff unless --staff) with an API token and print the token, "
        "alone on stdout, so that TOKEN=$(manage.py create_user alice) works. The user has no "
        "password: it signs in with the token (set one with changepassword for the admin)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--staff", action="store_true", help="Make a staff user.")
        parser.add_argument(
            "--group",
            action="append",
            default=[],
            metavar="GROUP",
            help="Add the user to this Django group (created if missing); repeatable. Access "
            "rules grant groups read or write on key prefixes.",
        )

    def handle(self, *args, username: str, staff: bool, group: list[str], **options):
        users = get_user_model()
        with transaction.atomic():
            if users.objects.filter(username=username).exists():
                raise CommandError(
                    f"User '{username}' already exists; "
                    f"`manage.py drf_create_token {username}` prints its token."
                )
            user = users(username=username, is_staff=staff)
            user.set_unusable_password()
            try:
                user.full_clean(exclude=["password"])
            except Exception as exc:  # ValidationError: a username Django refuses
                raise CommandError(f"Invalid username '{username}': {exc}") from exc
            user.save()
            for name in group:
                user.groups.add(Group.objects.get_or_create(name=name)[0])
            token = Token.objects.create(user=user)
        self.stdout.write(token.key)
