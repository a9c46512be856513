"""peftaudit: property testing and exact certificates for claims about PEFT methods."""

__version__ = "0.1.0"
