"""SlowFast-VGen world model: an action-conditioned video diffusion model (slow learning) with TEMP-LoRA episodic
memory (fast learning), used to imagine candidate plans."""
