from django.db import migrations


def create_revision_row(apps, schema_editor):
    StoreRevision = apps.get_model("state", "StoreRevision")
    StoreRevision.objects.get_or_create(pk=1, defaults={"revision": 0})


class Migration(migrations.Migration):
    dependencies = [("state", "0001_initial")]

    operations = [migrations.RunPython(create_revision_row, migrations.RunPython.noop)]
