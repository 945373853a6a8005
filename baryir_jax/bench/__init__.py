"""Speed and memory figures as JSON lines (`python -m baryir_jax.bench.<name>`)."""
