"""covidreg: a reproducible, fast regression trainer for the ML2021 Spring HW1 COVID-19 data."""

__version__ = "0.1.0"
