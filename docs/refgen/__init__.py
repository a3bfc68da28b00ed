"""The reference-page generators behind docs/gen_reference.py (one page per module)."""
