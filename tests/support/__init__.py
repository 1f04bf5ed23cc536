"""Support code shared by test files (fixtures and helpers, no tests), imported as ``support.<module>``."""
