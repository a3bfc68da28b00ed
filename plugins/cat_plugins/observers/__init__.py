"""Built-in observers: lifecycle-hook implementations that log runs."""
