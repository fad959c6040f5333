"""LoRA adapters: PEFT loading and validation, where adapters come from, GPU slots and the tiered cache."""
