"""Features: each declared once (`catalog`, with the dataclasses of `spec` and the ops of
`ops`), and everything derived from the declarations: the DuckDB SQL of each view
(`render`), the offline tables (`build`), the cold-start row (`online`)."""
