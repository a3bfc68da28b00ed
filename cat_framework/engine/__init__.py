"""The CaT loop: teacher (explore -> reference -> rewards), evaluate, GRPO math, trainer, SFT."""
