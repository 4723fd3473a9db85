"""creditwatch: watches an OpenRouter credit balance and alerts through apprise."""

__version__ = "0.1.0"
