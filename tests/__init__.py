"""The test suite as a package: its shared pieces are imported as `tests.<module>` (tests.helpers,
tests.fixtures, ...) and CLI runs started by a test name their callbacks `tests.<module>.<Class>`,
with the repository root on PYTHONPATH (helpers.cli_env)."""
