"""The curated task files, shipped in the package as `discovery.tasks.curated` (see pyproject.toml)."""
