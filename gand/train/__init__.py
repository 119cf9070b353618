"""Training: `python -m gand.train CONFIG [a.b=c ...]`, also under `accelerate launch`."""
