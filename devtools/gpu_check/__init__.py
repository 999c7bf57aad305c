"""The remote GPU check: payload, the one-call script and its Python steps (see README.md)."""
