"""brandlens: find the photos that show a brand's products, at archive scale."""

__version__ = "0.1.0"
