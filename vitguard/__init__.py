"""vitguard."""
