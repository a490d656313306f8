"""The funnel configuration: the YAML's models (`model`), the loader that refuses a bad file
with its file, line and reason (`loader`), and what is compiled from it to run per event:
matchers (`matching`), URL globs without backtracking (`glob`) and durations (`durations`)."""
