"""Acceptance policies: pure decisions about associations and operations."""
