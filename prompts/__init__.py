"""The LLM prompt templates, shipped in the package as `discovery.search.proposers.prompts` (see pyproject.toml)."""
