"""One module per family of commands; each exports ``COMMANDS``."""
