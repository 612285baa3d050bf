"""The fixture user the front end signs in as."""

from django.contrib.auth.hashers import make_password
from django.db import migrations


def add_alice(apps, schema_editor):
    User = apps.get_model("auth", "User")
    User.objects.create(username="alice", password=make_password("wonderland"))


class Migration(migrations.Migration):
    dependencies = [("store", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(add_alice, migrations.RunPython.noop)]
