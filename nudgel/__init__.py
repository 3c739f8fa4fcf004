"""Nudgel: contacts, segments and scoring, compiled."""

__version__ = "0.1.0"
