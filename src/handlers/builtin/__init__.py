"""Handlers that ship with trio-supervisor."""
