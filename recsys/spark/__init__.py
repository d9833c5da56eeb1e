"""The Spark offline engine: the session, the feature tables and the point-in-time join on
Spark SQL, from the same declarations as DuckDB's (selected by ``Settings.engine``)."""
