"""Database: the connection pool and how handlers get a connection, rows as models, and the
embedded PostgreSQL that starts when ``DATABASE_URL`` is unset."""
