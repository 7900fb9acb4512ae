"""Generation, scoring and reporting."""
