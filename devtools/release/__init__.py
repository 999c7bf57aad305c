"""Release tools: scripts that rewrite files shipped in fercli/assets (see README.md)."""
