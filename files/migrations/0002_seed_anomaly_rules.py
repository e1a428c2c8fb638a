"""Seed the anomaly rules with the seed system's inclusive ranges."""

from django.db import migrations

SEED_RULES = {
    "cpu_usage": (0, 85),
    "memory_usage": (0, 90),
    "disk_read": (0, 500),
    "disk_write": (0, 1000),
    "network_in": (0, 1000),
    "network_out": (0, 1000),
    "response_time": (0, 200),
}


def seed_rules(apps, schema_editor):
    AnomalyRule = apps.get_model("files", "AnomalyRule")
    for metric, (low, high) in SEED_RULES.items():
        AnomalyRule.objects.get_or_create(
            metric=metric, defaults={"min_value": low, "max_value": high}
        )


def remove_rules(apps, schema_editor):
    apps.get_model("files", "AnomalyRule").objects.filter(
        metric__in=SEED_RULES
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("files", "0001_initial")]

    operations = [migrations.RunPython(seed_rules, remove_rules)]
