"""Part of the `tests` package: modules import as tests.integration.NAME; basenames may repeat."""
