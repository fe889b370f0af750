"""YAML presets: each overrides the per-stage defaults one level deep."""
