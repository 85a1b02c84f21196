"""Send the naive baseline's model to the "naive" database alias, everything else to default."""

NAIVE_APP = "naive"


class NaiveRouter:
    def db_for_read(self, model, **hints):
        return "naive" if model._meta.app_label == NAIVE_APP else None

    def db_for_write(self, model, **hints):
        return "naive" if model._meta.app_label == NAIVE_APP else None

    def allow_relation(self, obj1, obj2, **hints):
        return None

    def allow_migrate(self, db, app_label, **hints):
        # Both aliases are the same database: migrating "default" creates every table once.
        return db == "default"
