"""Part of the `tests` package: modules import as tests.unit.NAME; basenames may repeat."""
