"""Adapters that put CaT's teacher inside other trainers (optional extras: each imports its
trainer's package only when used, and nothing under :mod:`cat_framework.engine` imports them)."""
