"""The retinamask tool: see README.md."""
