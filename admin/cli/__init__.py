"""The `switchyard` command line: a pure HTTP client of the admin API (see main.py)."""
