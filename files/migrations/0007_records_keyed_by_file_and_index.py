"""Records keyed by (file, index): no surrogate id, one index instead of two.

Django's schema editor does not turn a table's key into a composite one (adding a
CompositePrimaryKey is a no-op on the database), so the table is changed here:
in place on PostgreSQL, rebuilt on SQLite, which cannot alter a primary key.
"""

from django.db import migrations, models

TABLE = "files_metricrecord"
COLUMNS = (
    '"index" integer unsigned NOT NULL CHECK ("index" >= 0), '
    '"server" varchar(255) NOT NULL, "timestamp" datetime NOT NULL, '
    '"cpu_usage" real NULL, "memory_usage" real NULL, "disk_read" real NULL, '
    '"disk_write" real NULL, "network_in" real NULL, "network_out" real NULL, '
    '"response_time" real NULL, "file_id" bigint NOT NULL'
)
NAMES = (
    '"index", "server", "timestamp", "cpu_usage", "memory_usage", "disk_read", '
    '"disk_write", "network_in", "network_out", "response_time", "file_id"'
)


def _rebuild_sqlite(schema_editor, definition: str) -> None:
    """SQLite's way to change a key: a new table, the rows copied, renamed."""
    execute = schema_editor.execute
    execute(f'CREATE TABLE "new__{TABLE}" ({definition})')
    execute(f'INSERT INTO "new__{TABLE}" ({NAMES}) SELECT {NAMES} FROM "{TABLE}"')
    execute(f'DROP TABLE "{TABLE}"')
    execute(f'ALTER TABLE "new__{TABLE}" RENAME TO "{TABLE}"')


def key_by_file_and_index(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        _rebuild_sqlite(schema_editor, f'{COLUMNS}, PRIMARY KEY ("file_id", "index")')
        return
    execute = schema_editor.execute
    execute(f'ALTER TABLE "{TABLE}" DROP CONSTRAINT "record_file_index"')
    execute(f'ALTER TABLE "{TABLE}" DROP COLUMN "id"')
    execute(f'ALTER TABLE "{TABLE}" ADD PRIMARY KEY ("file_id", "index")')


def key_by_id(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "sqlite":
        _rebuild_sqlite(
            schema_editor,
            f'"id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, {COLUMNS}, '
            'CONSTRAINT "record_file_index" UNIQUE ("file_id", "index")',
        )
        return
    execute = schema_editor.execute
    execute(f'ALTER TABLE "{TABLE}" DROP CONSTRAINT "{TABLE}_pkey"')
    execute(f'ALTER TABLE "{TABLE}" ADD COLUMN "id" bigserial PRIMARY KEY')
    execute(
        f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "record_file_index" '
        'UNIQUE ("file_id", "index")'
    )


class Migration(migrations.Migration):
    dependencies = [
        ("files", "0006_upload_multipart"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(
                    model_name="metricrecord",
                    name="record_file_index",
                ),
                migrations.RemoveField(
                    model_name="metricrecord",
                    name="id",
                ),
                migrations.AddField(
                    model_name="metricrecord",
                    name="pk",
                    field=models.CompositePrimaryKey(
                        "file",
                        "index",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunPython(key_by_file_and_index, key_by_id),
            ],
        ),
    ]
