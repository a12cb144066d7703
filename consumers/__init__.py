"""Consumers of framestream topics: inference and subscribers."""
