"""Integrations with serving engines. Each submodule imports its engine; this package imports nothing."""
