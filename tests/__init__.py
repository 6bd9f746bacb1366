"""The test suites (a regular package: some upstream wheels install a top-level `tests` package)."""
