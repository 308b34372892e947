"""Schema and sessions: the only package that knows how herdbook's data is stored.

``herdbook.db.models`` holds the schema, ``herdbook.db.store`` engines, sessions and
migrations, ``herdbook.db.errors`` the errors and settings base every layer shares. Nothing is
imported here, so the training layer (which needs only the errors) runs without SQLAlchemy."""
