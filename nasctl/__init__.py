"""nasctl: tiny robust networks, searched and shipped to phones."""
__version__ = "0.1.0"
