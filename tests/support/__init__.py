"""Helpers shared by several test modules (imported as ``support.<module>``)."""
