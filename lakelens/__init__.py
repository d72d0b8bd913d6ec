"""lakelens: behaviour and model explanations over a data lake."""

__version__ = "0.1.0"
